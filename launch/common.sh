# Shared helpers of the launch scripts (sourced, not run): dry-run handling and shell quoting.
# Each script builds one command as a bash array, then calls `launch_run` on it: DRY_RUN=1 (or
# --dry-run anywhere on the command line) prints it, copy-pasteable, and exits 0 without running it.

# Prints $1 quoted for a POSIX shell: bare if it only holds safe characters, else in single quotes
# (after the `=` of a --flag=value, so the flag name stays readable).
launch_quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./=:,@%+^-]+$ ]]; then
    printf '%s' "$1"
  elif [[ "$1" =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
    launch_quote "${BASH_REMATCH[2]}"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Prints its arguments as one quoted command line.
launch_join() {
  local out="" arg
  for arg in "$@"; do
    out+="${out:+ }$(launch_quote "$arg")"
  done
  printf '%s' "$out"
}

# Takes --dry-run (sets DRY_RUN=1) and -h/--help (prints the usage, exits 0) from anywhere on the
# command line; the other arguments are left, in order, in the array LAUNCH_ARGS.
launch_take_common_flags() {
  LAUNCH_ARGS=()
  local arg
  for arg in "$@"; do
    case "$arg" in
      --dry-run) DRY_RUN=1 ;;
      -h|--help) echo "usage: $LAUNCH_USAGE"; exit 0 ;;
      *) LAUNCH_ARGS+=("$arg") ;;
    esac
  done
}

# Prints the usage line (from $LAUNCH_USAGE) to stderr and exits 2.
launch_usage_error() {
  [[ -n "${1:-}" ]] && echo "error: $1" >&2
  echo "usage: $LAUNCH_USAGE" >&2
  exit 2
}

# Prints the command under DRY_RUN=1, else replaces this shell with it.
launch_run() {
  if [[ "${DRY_RUN:-0}" == "1" ]]; then
    launch_join "$@"
    echo
    exit 0
  fi
  exec "$@"
}
