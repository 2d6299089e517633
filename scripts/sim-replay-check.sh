#!/usr/bin/env bash
# Alone vs suite: runs the whole simulation suite on one seed, tests in parallel as CI runs
# them, and collects the replay line and the event digest each scenario prints; then runs
# every printed replay line as it is and checks that it runs exactly that one test and
# prints the same digest. A failing seed's printed line must reproduce it.
#   SIM_REPLAY_SEED=N  the seed (default: the clock, so each run samples another one)
set -euo pipefail
cd "$(dirname "$0")/.."
seed=${SIM_REPLAY_SEED:-$(date +%s)}
suite=target/sim/replay-suite.log
echo "alone-vs-suite check on seed $seed"
if ! MADSIM_TEST_SEED=$seed cargo sim -q -- --skip selftest:: --nocapture >"$suite" 2>&1; then
  tail -40 "$suite"; echo "the suite failed on seed $seed" >&2; exit 1
fi
mapfile -t replays < <(grep -o 'replay: .*' "$suite" | sed 's/^replay: //' | sort -u)
[[ ${#replays[@]} -gt 10 ]] || { echo "only ${#replays[@]} replay lines in the suite's output" >&2; exit 1; }
checked=0
for line in "${replays[@]}"; do
  # MADSIM_TEST_SEED=S cargo sim -- NAME --exact --include-ignored
  [[ $line =~ ^MADSIM_TEST_SEED=([0-9]+)\ cargo\ sim\ --\ ([a-z0-9_:]+)\ --exact\ --include-ignored$ ]] ||
    { echo "malformed replay line: $line" >&2; exit 1; }
  s=${BASH_REMATCH[1]} name=${BASH_REMATCH[2]}
  # -o: libtest's progress dots can share the line with the digest in the parallel suite.
  want=$(grep -o "digest $name seed $s: .*" "$suite" || true)
  [[ $(wc -l <<<"$want") == 1 && -n $want ]] || { echo "$name: no single digest in the suite's output" >&2; exit 1; }
  alone=$(eval "$line -q --nocapture" 2>&1) || { echo "$alone" | tail -30; echo "replay failed: $line" >&2; exit 1; }
  grep -q '^test result: ok. 1 passed' <<<"$alone" || { echo "$alone" | tail -5; echo "$line does not run exactly one test" >&2; exit 1; }
  got=$(grep -o "digest $name seed $s: .*" <<<"$alone" || true)
  if [[ $got != "$want" ]]; then
    echo "$name seed $s: alone '$got', in the suite '$want'" >&2; exit 1
  fi
  checked=$((checked + 1))
done
echo "seed $seed: $checked scenarios give the same digest alone as in the suite"
