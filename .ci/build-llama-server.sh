#!/usr/bin/env bash
# Build llama-server from the llama-cpp-python sdist (which vendors llama.cpp) and cache it
# by version, so that tests on this machine get a real server without internet access to
# GitHub. Idempotent: a cache hit prints the path and returns at once. Concurrent runs are
# serialised with flock, so only one of them builds.
#
# Last stdout line: the absolute path of the cached binary. Progress goes to stderr.
#
# Environment:
#   LLAMA_CPP_PYTHON_VERSION  sdist version to build (default 0.3.36)
#   LLAMA_BUILD_JOBS          parallel compile jobs (default 2; the machine is shared)
#   XDG_CACHE_HOME            cache root (default ~/.cache)
set -euo pipefail

version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
jobs="${LLAMA_BUILD_JOBS:-2}"
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/securellm"
dest_dir="$cache_root/llama-server-$version"
dest="$dest_dir/llama-server"

log() { printf '%s\n' "build-llama-server: $*" >&2; }

if [[ -x "$dest" ]]; then
    printf '%s\n' "$dest"
    exit 0
fi

mkdir -p "$cache_root"
exec 9>"$cache_root/llama-server-$version.lock"
log "waiting for the build lock $cache_root/llama-server-$version.lock"
flock 9

# Another run may have finished the build while this one waited for the lock.
if [[ -x "$dest" ]]; then
    printf '%s\n' "$dest"
    exit 0
fi

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v ninja >/dev/null 2>&1 || missing+=(ninja-build)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
if ! pkg-config --exists openssl 2>/dev/null && [[ ! -f /usr/include/openssl/ssl.h ]]; then
    missing+=(libssl-dev)
fi
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        log "missing build tools (${missing[*]}) and not root: install them first"
        exit 1
    fi
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    for candidate in "$(dirname "$0")/../.venv/bin/python" python3; do
        if command -v "$candidate" >/dev/null 2>&1; then
            python="$candidate"
            break
        fi
    done
fi

work="$(mktemp -d "$cache_root/llama-build-$version.XXXXXX")"
trap 'rm -rf "$work"' EXIT

log "downloading the llama-cpp-python==$version sdist"
"$python" -m pip download --quiet --no-deps --no-binary :all: \
    "llama-cpp-python==$version" -d "$work/sdist" >&2
archive="$(find "$work/sdist" -maxdepth 1 -name 'llama_cpp_python-*.tar.gz' -print -quit)"
if [[ -z "$archive" ]]; then
    log "pip did not produce a llama_cpp_python sdist in $work/sdist"
    exit 1
fi
tar -xzf "$archive" -C "$work"
src="$(find "$work" -maxdepth 4 -type d -path '*/vendor/llama.cpp' -print -quit)"
if [[ -z "$src" ]]; then
    log "the sdist has no vendor/llama.cpp tree"
    exit 1
fi

log "configuring $src"
nice -n 19 cmake -S "$src" -B "$work/build" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=OFF \
    -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_UI=OFF >&2

log "building llama-server with -j$jobs (takes ~6 minutes on 2 cores)"
nice -n 19 cmake --build "$work/build" --target llama-server -j"$jobs" >&2

built="$work/build/bin/llama-server"
if [[ ! -x "$built" ]]; then
    log "the build finished but $built is missing"
    exit 1
fi
mkdir -p "$dest_dir"
# Copy next to the destination, then rename: a reader never sees a half-written binary.
cp "$built" "$dest.partial"
chmod 0755 "$dest.partial"
mv -f "$dest.partial" "$dest"
log "cached $dest"
printf '%s\n' "$dest"
