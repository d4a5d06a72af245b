# Sourced by the set-up scripts (install.sh, reference_venv.sh): `step WHAT COMMAND...` prints
# "$STEP_NAME: WHAT" and runs COMMAND with its output appended to $LOG; on failure it prints the
# end of $LOG and exits 1.
step() {
  echo "$STEP_NAME: $1"
  shift
  if ! "$@" >> "$LOG" 2>&1; then
    echo "$STEP_NAME: FAILED -- the end of $LOG:" >&2
    tail -n 40 "$LOG" >&2
    exit 1
  fi
}
