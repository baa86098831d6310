#!/usr/bin/env bash
# Benchmark: `build-image rootfs` against the pipeline users script by hand,
# on a Debian bookworm minbase image served by a local registry.
#
#   benches/rootfs.sh [RUNS]        (default 3 runs each; the median counts)
#
# Needs (as .ci/run installs): docker-registry skopeo mmdebstrap umoci
# squashfs-tools squashfs-tools-ng time. Run as root (mmdebstrap --mode=root,
# and umoci/mksquashfs keep owners and device nodes only as root).
#
# Measured, each from a cold state (empty cache, no OCI dir, no rootfs dir):
#   build-image cold  build-image --quiet rootfs REG/debian:bookworm -o OUT
#                     --compression zstd:3 --block-size 128K
#   build-image warm  the same with the blob cache of the previous run
#   classic           skopeo copy docker://… oci:DIR
#                     + umoci raw unpack + mksquashfs -comp zstd
#                     -Xcompression-level 3 -b 131072 -noappend -processors N
#   tar2sqfs          skopeo copy + zcat LAYER | tar2sqfs -c zstd -X level=3
#                     (streaming reference, for context)
# Wall time is the median of RUNS; peak RSS is GNU time's "Maximum resident
# set size" (the largest single process of the pipeline) of the median run.
set -euo pipefail

RUNS=${1:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
FIXTURES=$ROOT/target/test-fixtures
WORK=$(mktemp -d /tmp/build-image-bench.XXXXXX)
NPROC=$(nproc)
REG_PID=""

cleanup() {
    if [ -n "$REG_PID" ]; then kill "$REG_PID" 2>/dev/null || true; wait "$REG_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null || { echo "missing $1: apt-get install $2" >&2; exit 1; }; }
need docker-registry docker-registry
need skopeo skopeo
need umoci umoci
need mksquashfs squashfs-tools
need tar2sqfs squashfs-tools-ng
[ -x /usr/bin/time ] || { echo "missing /usr/bin/time: apt-get install time" >&2; exit 1; }

log() { printf '%s\n' "$*" >&2; }

# ------------------------------------------------------------------ fixture
mkdir -p "$FIXTURES"
BASE_TAR=$FIXTURES/debian-bookworm-minbase.tar
if [ ! -s "$BASE_TAR" ]; then
    need mmdebstrap mmdebstrap
    log "making $BASE_TAR with mmdebstrap (about a minute)"
    mode=--mode=root; [ "$(id -u)" -eq 0 ] || mode=--mode=unshare
    SOURCE_DATE_EPOCH=1700000000 mmdebstrap --quiet --variant=minbase $mode \
        --format=tar bookworm "$BASE_TAR.partial" http://deb.debian.org/debian
    mv "$BASE_TAR.partial" "$BASE_TAR"
fi

LAYOUT=$WORK/layout
log "OCI layout with one gzip layer (umoci raw add-layer)"
umoci init --layout "$LAYOUT"
umoci new --image "$LAYOUT:bookworm"
umoci raw add-layer --image "$LAYOUT:bookworm" "$BASE_TAR"

# ------------------------------------------------------------------ registry
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
PORT=""
for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 40000))
    if port_free "$p"; then PORT=$p; break; fi
done
[ -n "$PORT" ] || { echo "no free port" >&2; exit 1; }
mkdir -p "$WORK/registry"
cat > "$WORK/registry/config.yml" <<EOF
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $WORK/registry/data}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$PORT}
EOF
docker-registry serve "$WORK/registry/config.yml" > "$WORK/registry/log" 2>&1 &
REG_PID=$!
for _ in $(seq 1 100); do
    if ! port_free "$PORT"; then break; fi
    sleep 0.1
done
port_free "$PORT" && { cat "$WORK/registry/log" >&2; exit 1; }
REG=127.0.0.1:$PORT
IMAGE=$REG/debian:bookworm
skopeo --insecure-policy copy --quiet --dest-tls-verify=false --preserve-digests \
    "oci:$LAYOUT:bookworm" "docker://$IMAGE"
LAYER_SIZE=$(skopeo inspect --raw --tls-verify=false "docker://$IMAGE" \
    | grep -o '"size":[0-9]*' | tail -1 | cut -d: -f2)
log "registry at $REG, layer of $LAYER_SIZE bytes"

# ------------------------------------------------------------------ binary
log "cargo build --release"
(cd "$ROOT" && cargo build --release --quiet)
BIN=$ROOT/target/release/build-image

# ------------------------------------------------------------------ runner
# measure NAME SETUP_CMD CMD: runs SETUP_CMD untimed, then CMD under
# /usr/bin/time -v; appends "wall rss_kib" to $WORK/NAME.runs
measure() {
    local name=$1 setup=$2 cmd=$3
    bash -c "$setup"
    sync
    local t0 t1
    t0=$(date +%s.%N)
    /usr/bin/time -v -o "$WORK/$name.time" bash -c "$cmd"
    t1=$(date +%s.%N)
    local rss
    rss=$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$WORK/$name.time")
    echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}') $rss" >> "$WORK/$name.runs"
}

# median NAME -> "wall rss" of the median-wall run
median() { sort -n "$WORK/$1.runs" | awk '{a[NR] = $0} END {print a[int((NR + 1) / 2)]}'; }

CACHE=$WORK/cache
OCI=$WORK/oci
ROOTFS=$WORK/rootfs

for i in $(seq 1 "$RUNS"); do
    log "run $i of $RUNS"
    measure cold "rm -rf '$CACHE' '$WORK/bi.sqfs'" \
        "'$BIN' --cache-dir '$CACHE' --quiet rootfs '$IMAGE' -o '$WORK/bi.sqfs' --compression zstd:3 --block-size 128K >/dev/null"
    measure warm "rm -f '$WORK/bi-warm.sqfs'" \
        "'$BIN' --cache-dir '$CACHE' --quiet rootfs '$IMAGE' -o '$WORK/bi-warm.sqfs' --compression zstd:3 --block-size 128K >/dev/null"
    measure classic "rm -rf '$OCI' '$ROOTFS' '$WORK/classic.sqfs'" \
        "skopeo --insecure-policy copy --quiet --src-tls-verify=false 'docker://$IMAGE' 'oci:$OCI:bookworm' \
         && umoci --log error raw unpack --image '$OCI:bookworm' '$ROOTFS' \
         && mksquashfs '$ROOTFS' '$WORK/classic.sqfs' -comp zstd -Xcompression-level 3 -b 131072 -noappend -processors $NPROC -quiet -no-progress >/dev/null"
    measure tar2sqfs "rm -rf '$OCI' '$WORK/t2s.sqfs'" \
        "skopeo --insecure-policy copy --quiet --src-tls-verify=false 'docker://$IMAGE' 'oci:$OCI:bookworm' \
         && L=\$(ls -S '$OCI/blobs/sha256' | head -1) \
         && zcat '$OCI/blobs/sha256/'\$L | tar2sqfs -q -f -c zstd -X level=3 -j $NPROC '$WORK/t2s.sqfs'"
done

# ------------------------------------------------------------------ report
read -r COLD_W COLD_R <<< "$(median cold)"
read -r WARM_W WARM_R <<< "$(median warm)"
read -r CL_W CL_R <<< "$(median classic)"
read -r T2S_W T2S_R <<< "$(median tar2sqfs)"
S_BI=$(stat -c %s "$WORK/bi.sqfs")
S_WARM=$(stat -c %s "$WORK/bi-warm.sqfs")
S_CL=$(stat -c %s "$WORK/classic.sqfs")
S_T2S=$(stat -c %s "$WORK/t2s.sqfs")
ENTRIES=$(tar -tf "$BASE_TAR" | wc -l)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
mib() { awk -v a="$1" 'BEGIN {printf "%.1f", a / 1048576}'; }

echo
echo "Debian bookworm minbase: $ENTRIES entries, tar $(mib "$(stat -c %s "$BASE_TAR")") MiB, gzip layer $(mib "$LAYER_SIZE") MiB"
echo "$(nproc) cores, median of $RUNS runs, zstd level 3, 128 KiB blocks"
echo
printf '%-24s %9s %14s %14s\n' "pipeline" "wall (s)" "peak RSS (MiB)" "output (MiB)"
printf '%-24s %9s %14s %14s\n' "build-image (cold)" "$COLD_W" "$(awk -v k="$COLD_R" 'BEGIN {printf "%.0f", k / 1024}')" "$(mib "$S_BI")"
printf '%-24s %9s %14s %14s\n' "build-image (warm)" "$WARM_W" "$(awk -v k="$WARM_R" 'BEGIN {printf "%.0f", k / 1024}')" "$(mib "$S_WARM")"
printf '%-24s %9s %14s %14s\n' "skopeo+umoci+mksquashfs" "$CL_W" "$(awk -v k="$CL_R" 'BEGIN {printf "%.0f", k / 1024}')" "$(mib "$S_CL")"
printf '%-24s %9s %14s %14s\n' "skopeo+zcat|tar2sqfs" "$T2S_W" "$(awk -v k="$T2S_R" 'BEGIN {printf "%.0f", k / 1024}')" "$(mib "$S_T2S")"
echo
echo "build-image cold / classic: wall $(ratio "$COLD_W" "$CL_W")x (target <= 0.35x), peak RSS $(ratio "$COLD_R" "$CL_R")x, size $(ratio "$S_BI" "$S_CL")x (target within 2%)"
echo "build-image warm / classic: wall $(ratio "$WARM_W" "$CL_W")x"
echo "build-image cold / tar2sqfs streaming: wall $(ratio "$COLD_W" "$T2S_W")x, size $(ratio "$S_BI" "$S_T2S")x"
