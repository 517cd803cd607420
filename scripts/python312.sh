# Sourced by gpu_prep.sh and gpu_wheels.sh: sets py312 to a Python 3.12 that runs (the GPU
# machine's Python), or exits. $PYTHON312 wins; then pyenv's installs, then python3.12 on PATH
# (a pyenv shim there exits 127 when 3.12 is not pyenv's active version, so each is tried).
py312=${PYTHON312:-}
if [[ -z $py312 ]]; then
  for candidate in "$HOME"/.pyenv/versions/3.12*/bin/python3.12 "$(command -v python3.12 || true)"; do
    if [[ -n $candidate ]] &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
      py312=$candidate
      break
    fi
  done
fi
if [[ -z $py312 ]]; then
  echo "no working Python 3.12 found (pyenv's or python3.12 on PATH): install one, or set" \
    "PYTHON312=/path/to/python3.12" >&2
  exit 2
fi
