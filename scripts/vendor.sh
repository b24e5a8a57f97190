#!/usr/bin/env bash
# Generate vendor/llama.cpp from the pinned llama-cpp-python sdist and apply patches/.
#
#   scripts/vendor.sh            create the tree if missing, re-apply patches if patches/ changed
#   scripts/vendor.sh --reset    throw the tree away and make it again
#   scripts/vendor.sh --fetch    only download the pinned sdist into the cache (sha256 checked)
#
# The tree is a local git repo: the pristine sdist content is the commit tagged `pristine`,
# each file of patches/ is one commit on top (applied with `git am`). vendor/llama.cpp-stock
# is a worktree of the same repo at `pristine`: the unpatched reference build.
set -euo pipefail
shopt -s nullglob

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
eval "$(sed -n 's/^\([A-Z_0-9]*\) *:= *\(.*\)$/\1=\2/p' vendor/pin.mk)"

cache=${HOBBIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hobbit}
sdist_name="llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION}.tar.gz"
sdist="$cache/$sdist_name"
tree=vendor/llama.cpp
stock=vendor/llama.cpp-stock
stamp=$tree/.git/hobbit-stamp

die() { echo "vendor: $*" >&2; exit 1; }

patch_series_id() {
    { echo "$LLAMA_CPP_PYTHON_SHA256"; cat /dev/null patches/*.patch; } | sha256sum | cut -c1-16
}

fetch_sdist() {
    mkdir -p "$cache"
    if [ -f "$sdist" ] && echo "$LLAMA_CPP_PYTHON_SHA256  $sdist" | sha256sum -c --status; then
        return
    fi
    echo "vendor: downloading llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION sdist from the package index"
    # a plain download checked against the pin: nothing is built, any python3 will do
    python3 "$root/scripts/fetch_sdist.py" llama-cpp-python "$LLAMA_CPP_PYTHON_VERSION" \
        "$LLAMA_CPP_PYTHON_SHA256" "$sdist" || exit 1
}

count_patches() { local a=(patches/*.patch); echo ${#a[@]}; }

write_stamp() { { patch_series_id; git_v rev-parse HEAD; } > "$stamp"; }

git_v() { git -C "$tree" -c user.name=hobbit -c user.email=hobbit@localhost -c commit.gpgsign=false "$@"; }

extract() {
    fetch_sdist
    echo "vendor: extracting vendor/llama.cpp from $sdist_name"
    rm -rf "$tree" "$stock"
    local tmp
    tmp=$(mktemp -d vendor/.extract.XXXXXX)
    tar -xzf "$sdist" -C "$tmp" "llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp"
    mv "$tmp/llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp" "$tree"
    rm -rf "$tmp"
    rm -f "$tree/.git"   # the sdist keeps a gitlink file pointing at a submodule dir it lacks
    git_v init -q -b hobbit
    git_v add -A -f .
    GIT_AUTHOR_DATE="2000-01-01T00:00:00Z" GIT_COMMITTER_DATE="2000-01-01T00:00:00Z" \
        git_v commit -q -m "llama.cpp from llama-cpp-python $LLAMA_CPP_PYTHON_VERSION (pristine)"
    git_v tag pristine
    git_v worktree add -q --detach "$root/$stock" pristine
}

apply_patches() {
    git_v reset -q --hard pristine
    local p
    for p in patches/*.patch; do
        [ -e "$p" ] || continue
        git_v am -q --keep-cr --committer-date-is-author-date "$root/$p" \
            || { git_v am --abort || true; die "patch $p does not apply to the pinned tree"; }
    done
    write_stamp
    echo "vendor: applied $(count_patches) patch(es) on top of pristine"
}

if [ "${1:-}" = "--fetch" ]; then
    fetch_sdist
    exit 0
fi

if [ "${1:-}" = "--reset" ]; then
    rm -rf "$tree" "$stock"
fi

if [ ! -d "$tree/.git" ] || ! git_v rev-parse -q --verify pristine >/dev/null; then
    extract
    apply_patches
    exit 0
fi

want=$(patch_series_id)
have=$(sed -n 1p "$stamp" 2>/dev/null || true)
[ "$want" = "$have" ] && exit 0

# patches/ changed since the tree was made. Re-apply only when that cannot lose work.
if [ -n "$(git_v status --porcelain --untracked-files=no)" ]; then
    die "patches/ changed, but vendor/llama.cpp has uncommitted edits; commit them and run 'make patches', or 'make vendor-reset'"
fi
ours=$(git_v format-patch --stdout pristine..HEAD | git_v patch-id --stable | cut -d' ' -f1 | sort)
theirs=$(cat /dev/null patches/*.patch | git_v patch-id --stable | cut -d' ' -f1 | sort)
if [ "$ours" = "$theirs" ]; then
    write_stamp   # the tree already holds exactly patches/ (e.g. just exported)
    exit 0
fi
if [ "$(git_v rev-parse HEAD)" != "$(sed -n 2p "$stamp" 2>/dev/null)" ]; then
    die "vendor/llama.cpp has commits not in patches/; run 'make patches' first, or 'make vendor-reset' to drop them"
fi
apply_patches
