#!/usr/bin/env bash
# What a user who `pip install`s onellm gets, checked outside the checkout: the wheel (core
# only) in a fresh venv, used from a temporary directory; then the serve extra. Run by .ci/run
# after `make test`; `make install-check` runs it by hand. Needs the dev venv (.venv) for
# `build`.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
server=""
cleanup() {
    if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
py="${PYTHON:-python3}"
say() { printf '\ninstall-check: %s\n' "$*"; }
# pip, its output filtered of this machine's registry notes; its own exit status kept
pip_install() {
    "$work/venv/bin/pip" install --quiet "$@" >"$work/pip.log" 2>&1 \
        || { grep -v "^WARNING: Location" "$work/pip.log" | tail -20; return 1; }
}

say "building the wheel from the checkout's files (tracked, and untracked but not ignored)"
mkdir "$work/src"
(cd "$repo" && git ls-files -co --exclude-standard -z | xargs -0 tar -cf - 2>/dev/null) | tar -xf - -C "$work/src"
"$repo/.venv/bin/python" -m build --wheel --outdir "$work/dist" "$work/src" >"$work/build.log" 2>&1 \
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
assert "onellm/lmms/tasks/onellm_point_cap.yaml" in names  # lmms-eval's tasks: package data
assert "onellm/configs/weights/tiny_decoders.safetensors" in names  # the demo's stage 5 loads it
EOF

say "installing it, core only, into a fresh venv"
"$py" -m venv "$work/venv"
pip_install --upgrade pip || true  # an old pip still installs the wheel
pip_install "$wheel"
site="$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
added="$(cat "$site"/onellm-*.dist-info/top_level.txt 2>/dev/null || true)"
echo "top_level.txt: ${added:-<none>}"
for name in modalities experts configs; do
    [ ! -e "$site/$name" ] || { echo "a generic top-level name was installed: $name"; exit 1; }
done
[ "$added" = "onellm" ] || { echo "expected the single top-level name onellm, got: $added"; exit 1; }
"$work/venv/bin/python" -c 'import importlib.util as u; assert u.find_spec("gradio") is None and u.find_spec("fastapi") is None' \
    || { echo "the core install pulled in the serve extra"; exit 1; }

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
assert isinstance(reply.text, str) and len(reply.token_ids) >= 1
EOF

say "a 2-step stage from a packaged recipe"
"$work/venv/bin/onellm" train stage1_image init_from=tiny steps=2 batch_size=4 log_every=1 \
    eval.samples=2 data.image.pool=8 2>&1 | grep -v "it/s" | tail -3
test -f runs/demo/stage1/final/model.safetensors || { echo "no runs/demo/stage1/final under $(pwd)"; exit 1; }
test -f runs/demo/stage1/metrics.jsonl

say "the demo, every stage at a few steps, from here"
"$work/venv/bin/onellm" demo --out runs/quick --steps-scale 0.005 eval.samples=4 2>&1 \
    | grep -E "^(stage|wall time|chat with)" || true
test -f runs/quick/report.json && test -f runs/quick/stage5/final/model.safetensors \
    || { echo "the demo did not finish under $(pwd)/runs/quick"; exit 1; }

say "onellm serve without the serve extra names it"
set +e
msg="$("$work/venv/bin/onellm" serve tiny 2>&1)"
rc=$?
set -e
echo "$msg" | tail -3
[ "$rc" = 2 ] && echo "$msg" | grep -q "pip install 'onellm\[serve\]'" \
    || { echo "expected exit 2 naming the serve extra, got $rc"; exit 1; }

say "with the serve extra, one request"
pip_install "${wheel}[serve]"
port=$(( 20000 + RANDOM % 20000 ))
"$work/venv/bin/onellm" serve tiny --port "$port" --no-ui >"$work/serve.log" 2>&1 &
server=$!
"$work/venv/bin/python" - "$port" "$work/serve.log" <<'EOF'
import json, sys, time, urllib.request
port, log = sys.argv[1], sys.argv[2]
base = f"http://127.0.0.1:{port}"
for _ in range(240):
    try:
        urllib.request.urlopen(f"{base}/v1/models", timeout=2)
        break
    except OSError:
        time.sleep(0.5)
else:
    sys.exit("the server did not answer in 120 s:\n" + open(log).read()[-3000:])
body = {"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": "hello"}]}
req = urllib.request.Request(f"{base}/v1/chat/completions", json.dumps(body).encode(),
                             {"content-type": "application/json"})
answer = json.load(urllib.request.urlopen(req, timeout=60))
print("answer:", json.dumps(answer)[:300])
assert answer["choices"][0]["message"]["role"] == "assistant"
EOF
say "passed"
