# Sourced by bench/ab.sh and bench/compare.sh: the CPU the servers spent, read from /proc.

TICKS=$(getconf CLK_TCK)

# utime+stime of the given processes, in clock ticks.
cpu_ticks() {
  local p total=0 f
  for p in "$@"; do
    # Fields after the ")" of the command name: utime and stime are the 12th and 13th there.
    f=$(sed 's/.*) //' "/proc/$p/stat")
    set -- $f
    total=$((total + ${12} + ${13}))
  done
  echo "$total"
}
