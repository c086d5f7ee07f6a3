#!/usr/bin/env bash
# Runs `forward` and `denoise` on every committed fixture with two builds of ecad-native and
# compares the output files byte for byte (a refactor must leave them bit-identical).
#   tools/compare/builds.sh OLD_BINARY NEW_BINARY
# Prints one line per case and exits non-zero when any output differs.
set -euo pipefail
old=$1 new=$2
root=$(cd "$(dirname "$0")/../.." && pwd)
fx=$root/tests/fixtures
shared=$root/../shared/reference/ecad/schedules
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export ECAD_DEVICE=cpu
n=0 bad=0
run_case() { # name, args...
    local name=$1; shift
    n=$((n + 1))
    "$old" "$@" --out "$work/old.safetensors" >/dev/null 2>"$work/old.err" || { echo "FAIL $name: old build: $(tail -1 "$work/old.err")"; bad=$((bad + 1)); return; }
    "$new" "$@" --out "$work/new.safetensors" >/dev/null 2>"$work/new.err" || { echo "FAIL $name: new build: $(tail -1 "$work/new.err")"; bad=$((bad + 1)); return; }
    if cmp -s "$work/old.safetensors" "$work/new.safetensors"; then
        echo "identical $name ($(sha256sum <"$work/new.safetensors" | cut -c1-16))"
    else
        echo "DIFFERENT $name"; bad=$((bad + 1))
    fi
}
for d in "$fx"/pixart/*/ "$fx"/flux/*/; do
    c=$(basename "$d")
    run_case "forward $(basename "$(dirname "$d")")/$c" forward --model "$d/transformer" --inputs "$d/inputs.safetensors" --device cpu
done
for m in "$fx"/denoise/cases/*.json; do
    c=$(basename "$m" .json)
    read -r model steps guidance schedule < <(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(j["model"], j["steps"], j["guidance"], j.get("schedule") or "-")' "$m")
    args=(denoise --model "$fx/denoise/$model" --inputs "${m%.json}.safetensors" --steps "$steps" --guidance "$guidance" --device cpu)
    [ "$schedule" != "-" ] && args+=(--schedule "$shared/$schedule")
    run_case "denoise $c" "${args[@]}"
done
for d in "$fx"/flux_denoise/*/; do
    c=$(basename "$d")
    read -r steps guidance height width < <(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(j["steps"], j["guidance"], j["height"], j["width"])' "$d/meta.json")
    run_case "denoise flux/$c" denoise --model "$d" --inputs "$d/inputs.safetensors" --steps "$steps" --guidance "$guidance" --height "$height" --width "$width" --device cpu
    for s in "$d"/schedules/*.json; do
        [ -e "$s" ] || continue
        run_case "denoise flux/$c $(basename "$s" .json)" denoise --model "$d" --inputs "$d/inputs.safetensors" --steps "$steps" --guidance "$guidance" --height "$height" --width "$width" --device cpu --schedule "$s"
    done
done
echo "$((n - bad)) identical, $bad different or failed, of $n"
[ "$bad" -eq 0 ]
