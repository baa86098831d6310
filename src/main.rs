use std::process::ExitCode;

use build_image::cli::{self, Cli, ErrorDoc};
use build_image::progress::Console;

fn main() -> ExitCode {
    let cli = match Cli::try_parse_checked(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => {
            let code = e.exit_code();
            // --json asks for a document on stdout, even for a usage error.
            if code != 0 && std::env::args().any(|a| a == "--json") {
                let doc = ErrorDoc::of(&anyhow::anyhow!("{}", e.kind()), code);
                if let Ok(line) = cli::to_json(&doc) {
                    println!("{line}");
                }
            }
            e.exit();
        }
    };
    let level = match (cli.global.quiet, cli.global.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let console = Console::new(cli.global.quiet);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BUILD_IMAGE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(console.log_writer())
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_target(false)
        .init();
    let json = cli.global.json;
    match cli::run(cli, &console) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if json {
                if let Ok(line) = cli::to_json(&ErrorDoc::of(&e, 1)) {
                    println!("{line}");
                }
            }
            ExitCode::FAILURE
        }
    }
}
