#!/usr/bin/env bash
# Fresh machine -> ready project, offline except the package index.
#   ./setup.sh          creates .venv, installs requirements*.txt, seeds tiktoken's GPT-2 cache
#   source setup.sh     the same, and leaves .venv active in your shell
# Idempotent: a second run reinstalls nothing (a stamp holds the hash of the requirement files).
# Works under `set -u`; any failed step prints what failed and returns/exits nonzero.

_setup_main() {
    local root py venv stamp want have
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)" || return 1
    py="${PYTHON:-python3}"
    venv="$root/.venv"
    stamp="$venv/.requirements.sha256"

    if [ ! -x "$venv/bin/python" ]; then
        echo "setup: creating $venv with $($py --version 2>&1)"
        "$py" -m venv "$venv" || { echo "setup: error: '$py -m venv' failed" >&2; return 1; }
    else
        echo "setup: using existing $venv"
    fi

    want="$(cat "$root/requirements.txt" "$root/requirements-dev.txt" | sha256sum | cut -d' ' -f1)"
    have="$(cat "$stamp" 2>/dev/null || true)"
    if [ "$want" != "$have" ]; then
        echo "setup: installing requirements.txt and requirements-dev.txt (torch pinned to the CPU file here)"
        "$venv/bin/python" -m pip install --disable-pip-version-check -q \
            -r "$root/requirements.txt" -r "$root/requirements-dev.txt" 2> >(grep -v '^WARNING: Location' >&2) \
            || { echo "setup: error: pip install failed (see above)" >&2; return 1; }
        echo "$want" > "$stamp"
    else
        echo "setup: requirements already installed (hash unchanged), skipping pip"
    fi

    echo "setup: seeding tiktoken's GPT-2 cache in $root/.cache/tiktoken"
    TIKTOKEN_CACHE_DIR="$root/.cache/tiktoken" "$venv/bin/python" "$root/tokenizer.py" seed \
        || { echo "setup: error: tokenizer cache seeding failed" >&2; return 1; }
    mkdir -p "$root/log" "$root/img" "$root/data"
    echo "setup: done. python: $venv/bin/python ($("$venv/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
}

if (return 0 2>/dev/null); then
    # sourced: keep the caller's shell options, activate the venv on success
    if _setup_main; then
        # shellcheck disable=SC1091
        source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/.venv/bin/activate"
        export TIKTOKEN_CACHE_DIR="${TIKTOKEN_CACHE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/.cache/tiktoken}"
        echo "setup: venv active"
        unset -f _setup_main
    else
        unset -f _setup_main
        return 1
    fi
else
    set -u
    _setup_main || exit 1
fi
