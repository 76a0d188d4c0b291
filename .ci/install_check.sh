#!/usr/bin/env bash
# What a user who `pip install`s onellm gets, checked outside the checkout: the wheel (core
# only) in a fresh venv, used from a temporary directory; then the serve extra. Run by .ci/run
# after `make test`; `make install-check` runs it by hand.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'kill "${server:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
py="${PYTHON:-python3}"
say() { printf '\ninstall-check: %s\n' "$*"; }

say "building the wheel"
"$repo/.venv/bin/python" -m build --wheel --outdir "$work/dist" "$repo" >"$work/build.log" 2>&1 \
    || { tail -20 "$work/build.log"; exit 1; }
wheel="$(ls "$work"/dist/onellm-*.whl)"
"$repo/.venv/bin/python" - "$wheel" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
tops = sorted({n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")})
yamls = [n for n in names if n.endswith(".yaml")]
print(f"wheel: {len(names)} files, top-level {tops}, {len(yamls)} YAML configs")
assert tops == ["onellm"], tops
assert "onellm/configs/tiny.yaml" in names and "onellm/configs/stages/stage1_image.yaml" in names
assert any(n.startswith("onellm/modalities/") for n in names)
assert any(n.startswith("onellm/experts/projection/") for n in names)
EOF

say "installing it, core only, into a fresh venv"
"$py" -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --upgrade pip >/dev/null 2>&1 || true
"$work/venv/bin/pip" install --quiet "$wheel" 2>&1 | grep -v "^WARNING: Location" || true
site="$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
added="$(cd "$site" && cat onellm-*.dist-info/top_level.txt 2>/dev/null || true)"
echo "top_level.txt: ${added:-<none>}"
ls "$site" | grep -E '^(modalities|experts|configs)$' && { echo "a generic top-level name was installed"; exit 1; }
[ "$added" = "onellm" ] || { echo "expected the single top-level name onellm, got: $added"; exit 1; }

cd "$work" && mkdir use && cd use
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
say "the tiny model by name, a chat, from $(pwd)"
"$work/venv/bin/python" - <<'EOF'
import torch
from PIL import Image
from onellm import OneLLM
torch.manual_seed(0)
model = OneLLM.from_config("tiny")
reply = model.chat(Image.new("RGB", (64, 64), "red"), modality="image",
                   prompt="What is this?", max_new_tokens=5)
print("chat:", repr(reply.text), "| modalities:", sorted(model.modalities))
assert isinstance(reply.text, str) and sorted(model.modalities)
EOF

say "a 2-step stage from a packaged recipe"
"$work/venv/bin/onellm" train stage1_image init_from=tiny steps=2 batch_size=4 log_every=1 \
    eval.samples=2 data.image.pool=8
test -f runs/demo/stage1/final/model.safetensors || { echo "no runs/demo/stage1/final under $(pwd)"; exit 1; }
test -f runs/demo/stage1/metrics.jsonl

say "onellm serve without the serve extra names it"
set +e
msg="$("$work/venv/bin/onellm" serve tiny 2>&1)"; rc=$?
set -e
echo "$msg" | tail -3
[ "$rc" = 2 ] && echo "$msg" | grep -q "pip install 'onellm\[serve\]'" \
    || { echo "expected exit 2 naming the serve extra, got $rc"; exit 1; }

say "with the serve extra, one request"
"$work/venv/bin/pip" install --quiet "${wheel}[serve]" 2>&1 | grep -v "^WARNING: Location" || true
port=$(( 20000 + RANDOM % 20000 ))
"$work/venv/bin/onellm" serve tiny --port "$port" --no-ui >"$work/serve.log" 2>&1 &
server=$!
for _ in $(seq 1 120); do
    curl -fsS "http://127.0.0.1:$port/v1/models" >/dev/null 2>&1 && break
    kill -0 "$server" 2>/dev/null || { cat "$work/serve.log"; exit 1; }
    sleep 1
done
answer="$(curl -fsS "http://127.0.0.1:$port/v1/chat/completions" -H 'content-type: application/json' \
    -d '{"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": "hello"}]}')"
echo "answer: $answer"
echo "$answer" | "$work/venv/bin/python" -c 'import json,sys; r=json.load(sys.stdin); assert r["choices"][0]["message"]["role"]=="assistant"'
say "passed"
