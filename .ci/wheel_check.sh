#!/usr/bin/env bash
# Does the wheel stand alone? Build it, install it into a fresh virtualenv outside the checkout, and run
# `rootedgan demo` (a few steps) and `rootedgan generate` from an empty folder, where no configs/, tests/
# or source tree can help. The fresh venv borrows the dependencies (torch, lightning, ...) of the project's
# venv through a .pth file (no second multi-GB install); the project itself is only the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_PY="${1:-.venv/bin/python}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$VENV_PY" -m pip wheel --quiet --no-deps -w "$work/dist" .
wheel="$(ls "$work"/dist/rootedgan-*.whl)"
python_abs="$(cd "$(dirname "$VENV_PY")" && pwd)/$(basename "$VENV_PY")"
"$python_abs" -m venv "$work/env"
deps="$("$python_abs" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
site="$("$work/env/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$deps" > "$site/rootedgan-ci-deps.pth"
"$work/env/bin/python" -m pip install --quiet --no-deps --no-index "$wheel"
mkdir "$work/empty"
cd "$work/empty"
where="$("$work/env/bin/python" -c 'import rootedgan, os; print(os.path.dirname(rootedgan.__file__))')"
case "$where" in "$work"/env/*) ;; *) echo "wheel check: rootedgan imported from $where, not the wheel" >&2; exit 1;; esac
"$work/env/bin/rootedgan" demo --kimg 0.032 --out demo-run
ls demo-run/lightning_logs/version_0/network-snapshot-*.safetensors
"$work/env/bin/rootedgan" generate --network demo-run/lightning_logs/version_0/network-snapshot-000000.safetensors \
    --seeds 0-3 --outdir generated
test "$(ls generated | wc -l)" -ge 4
echo "wheel check: ok ($(basename "$wheel"): demo and generate from an empty folder)"
