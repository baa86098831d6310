//! `os-agent`: parses the command line, runs the command, prints an error
//! once and exits non-zero on failure (2: `health` found the boot
//! degraded; 3: `upgrade` or `rollback` refused before writing; 4: what
//! `upgrade` wrote did not match its digest).

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let code = match os_agent::cli::parse(&argv).and_then(|a| os_agent::cli::run(&a)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("os-agent: error: {e}");
            1
        }
    };
    std::process::exit(code);
}
