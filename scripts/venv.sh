# Shared by ./driftswitch and ./run-tests: create .venv on first use and keep the install current.
# The project installs in setuptools' strict editable mode (DESIGN.md "Layout": the folders map
# into the driftswitch namespace, and type checkers need a real package tree). Strict mode links
# the files that exist at install time, so the cheap --no-deps reinstall below runs whenever the
# set of source files changes; dependencies are reinstalled when pyproject.toml changes.
VENV=${DRIFTSWITCH_VENV:-.venv}

# Run a command, showing its output only if it fails.
quiet() {
  local log
  log=$(mktemp)
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    return 1
  fi
  rm -f "$log"
}

ensure_venv() {
  local extra=$1 py=${PYTHON:-python3}
  # Serialise concurrent callers (parallel test runs would otherwise race inside pip).
  mkdir -p "$VENV"
  exec 9>"$VENV.lock"
  flock 9
  if [ ! -x "$VENV/bin/python" ]; then
    rm -rf "$VENV"
    echo "driftswitch: creating $VENV (first run only; the install below takes 1-5 minutes)" >&2
    "$py" -m venv "$VENV"
    quiet "$VENV/bin/python" -m pip install --upgrade pip
  fi
  local want have
  want="$extra $(cat pyproject.toml | sha1sum | cut -c1-40)"
  have=$(cat "$VENV/.deps-stamp" 2>/dev/null || true)
  if [ "$want" != "$have" ] && ! { [ "$extra" = service ] && [ "${have%% *}" = dev ] && [ "${have#* }" = "${want#* }" ]; }; then
    echo "driftswitch: installing dependencies ($extra) into $VENV with pip (1-5 minutes;" \
      "longer on a slow network)" >&2
    quiet "$VENV/bin/python" -m pip install -e ".[$extra]" --config-settings editable_mode=strict
    echo "$want" > "$VENV/.deps-stamp"
  fi
  local files
  files=$(find streams detectors -name '*.py' -o -name 'py.typed' | sort | sha1sum | cut -c1-40)
  if [ "$files" != "$(cat "$VENV/.files-stamp" 2>/dev/null || true)" ]; then
    quiet "$VENV/bin/python" -m pip install --no-deps -e . --config-settings editable_mode=strict
    echo "$files" > "$VENV/.files-stamp"
  fi
  flock -u 9
}
