# Shared by ./driftswitch and ./run-tests: create .venv on first use and keep the install current.
# The project installs in setuptools' strict editable mode (the folders map
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

# Read pip's output; print one short line per package collected, then what gets installed.
# On a terminal the line is rewritten in place; otherwise each step is its own line.
progress_lines() {
  local line n=0 tty=0
  [ -t 2 ] && tty=1
  while IFS= read -r line; do
    case $line in
      Collecting*|"Obtaining "*)
        n=$((n + 1))
        line=${line#Collecting }
        line=${line#Obtaining }
        line=${line%% (*}
        if [ "$tty" = 1 ]; then
          printf '\r\033[Kdriftswitch:   [%d] %s' "$n" "${line:0:60}" >&2
        else
          printf 'driftswitch:   [%d] %s\n' "$n" "$line" >&2
        fi
        ;;
      "  Downloading "*|"Downloading "*)  # the big wheels (numpy, river) take the time
        line=${line#*Downloading }
        [ "$tty" = 1 ] && printf '\r\033[K' >&2
        printf 'driftswitch:       downloading %s\n' "${line##*/}" >&2
        ;;
      "Installing collected packages:"*)
        [ "$tty" = 1 ] && printf '\r\033[K' >&2
        local names=${line#*:} commas
        commas=${names//[^,]/}
        printf 'driftswitch:   installing %d packages (unpacking and linking)...\n' \
          $((${#commas} + 1)) >&2
        ;;
    esac
  done
  [ "$tty" = 1 ] && [ "$n" -gt 0 ] && printf '\r\033[K' >&2
  return 0
}

# Run a pip command showing its progress (progress_lines), its whole output only if it fails,
# and how long it took.
with_progress() {
  local log started status
  log=$(mktemp)
  started=$SECONDS
  { "$@" && echo 0 >"$log.rc" || echo $? >"$log.rc"; } 2>&1 | tee "$log" | progress_lines
  status=$(cat "$log.rc")
  rm -f "$log.rc"
  if [ "$status" != 0 ]; then
    cat "$log" >&2
    rm -f "$log"
    return "$status"
  fi
  rm -f "$log"
  echo "driftswitch:   done in $((SECONDS - started)) s" >&2
}

ensure_venv() {
  local extra=$1 py=${PYTHON:-python3}
  # Serialise concurrent callers (parallel test runs would otherwise race inside pip). flock is
  # util-linux's; where it is missing (macOS), callers are not serialised: start one at a time.
  mkdir -p "$VENV"
  local locked=
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$VENV.lock"
    flock 9
    locked=1
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    rm -rf "$VENV"
    echo "driftswitch: creating $VENV (first run only; the install below takes 1-4 minutes)" >&2
    "$py" -m venv "$VENV"
    echo "driftswitch:   upgrading pip in $VENV" >&2
    quiet "$VENV/bin/python" -m pip install --upgrade pip
  fi
  local want have
  want="$extra $(digest < pyproject.toml)"
  have=$(cat "$VENV/.deps-stamp" 2>/dev/null || true)
  if [ "$want" != "$have" ] && ! { [ "$extra" = service ] && [ "${have%% *}" = dev ] && [ "${have#* }" = "${want#* }" ]; }; then
    if [ -z "$have" ]; then
      echo "driftswitch: installing driftswitch and its dependencies ($extra extra: aiokafka," \
        "pydantic, numpy, river, aiohttp, ...) into $VENV; first run only, 1-4 minutes" \
        "(downloads, then unpacking)" >&2
    else
      echo "driftswitch: pyproject.toml changed; updating the dependencies ($extra) in $VENV" >&2
    fi
    with_progress "$VENV/bin/python" -m pip install --progress-bar off \
      -e ".[$extra]" --config-settings editable_mode=strict
    echo "$want" > "$VENV/.deps-stamp"
  fi
  local files
  files=$(find streams detectors -name '*.py' -o -name 'py.typed' | sort | digest)
  if [ "$files" != "$(cat "$VENV/.files-stamp" 2>/dev/null || true)" ]; then
    echo "driftswitch: linking driftswitch's source files into $VENV (after a change of files)" >&2
    quiet "$VENV/bin/python" -m pip install --no-deps -e . --config-settings editable_mode=strict
    echo "$files" > "$VENV/.files-stamp"
  fi
  if [ -n "$locked" ]; then flock -u 9; fi
}

# The SHA-1 of stdin, hex (GNU coreutils' sha1sum; macOS has shasum instead).
digest() {
  if command -v sha1sum >/dev/null 2>&1; then sha1sum; else shasum -a 1; fi | cut -c1-40
}
