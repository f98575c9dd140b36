"""Generation and judging, side by side on one machine: the project's stage programs against a
plain vLLM offline script tuned for this machine, and against a per-prompt Hugging Face
`generate` loop (how the peers' self-rewarding code samples).

    make -s .selfreward/models/smollm2-135m-instruct/config.json
    .venv/bin/python bench/inference_vs_peers.py            # SmolLM2-135M-Instruct and the tiny model

Every side does the same work: P prompts of the real-model seed, N candidates each (temperature
0.7, top-p 0.9, up to T tokens), then K judgements of every candidate with the project's judge
prompt (same sampling). Output tokens are counted the same way for every side (the texts
re-tokenized by the model's tokenizer). Each side is whole processes, imports and model load
included. Engine start (process start to a ready engine) is reported apart: raw vLLM and the HF
loop time it in the process, the stage programs in a process that only opens their backend.

The raw vLLM side is tuned over a small grid (executor, dtype, KV-cache block size)
and the fastest is kept, so the ratio shows the project's settings against the best this
machine gives, not against a copy of themselves. Judge prefill: prompt tokens computed (prompt
tokens less prefix-cache hits) in the judge pass through the stages' backend, and through plain
vLLM with n=K and prefix caching, against K requests of one sample with nothing shared.

Writes bench/results/inference-vs-peers.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULT = REPO / "bench" / "results" / "inference-vs-peers.json"
SMOLLM2 = REPO / ".selfreward" / "models" / "smollm2-135m-instruct"
SEED = REPO / "examples" / "seed" / "real-model"
TEMPERATURE, TOP_P = 0.7, 0.9

# Both vLLM scripts read the engine's prompt-token and prefix-cache counters the same way.
PREFILL_COUNTERS = r'''
def counters(llm):
    names = ("vllm:prefix_cache_queries", "vllm:prefix_cache_hits", "vllm:prompt_tokens")
    return {m.name.split(":")[1]: getattr(m, "value", 0) for m in llm.get_metrics() if m.name in names}
'''

RAW_VLLM = PREFILL_COUNTERS + r'''
import json, os, sys, time
started = time.monotonic()
work = json.loads(sys.argv[1])
from vllm import LLM, SamplingParams
llm = LLM(model=work["model"], seed=0, enforce_eager=True, disable_log_stats=False, **work["engine"])
ready = time.monotonic()
out = {"engineStart": ready - started}
tokenizer = llm.get_tokenizer()
def chat(texts):
    return [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
            for t in texts]
def params(n):
    return SamplingParams(n=n, temperature=work["temperature"], top_p=work["topP"], max_tokens=work["maxTokens"])
generated = llm.generate(chat(work["prompts"]), params(work["candidates"]), use_tqdm=False)
candidates = [[c.text for c in o.outputs] for o in generated]
judge_prompts = chat([work["judgeTemplate"].format(prompt=p, response=c)
                      for p, cs in zip(work["prompts"], candidates) for c in cs])
before = counters(llm)
if work.get("separateJudgeRequests"):
    judged = llm.generate([p for p in judge_prompts for _ in range(work["samples"])], params(1), use_tqdm=False)
else:
    judged = llm.generate(judge_prompts, params(work["samples"]), use_tqdm=False)
after = counters(llm)
out.update({"candidates": candidates, "judgements": [c.text for o in judged for c in o.outputs],
            "judgePrefill": {k: after.get(k, 0) - before.get(k, 0) for k in after}})
print(json.dumps(out))
'''

STAGE_JUDGE_PREFILL = PREFILL_COUNTERS + r'''
import json, os, sys
from pathlib import Path
work = json.loads(sys.argv[1])
os.environ["SELFREWARD_VLLM_ARGS"] = json.dumps({**json.loads(os.environ.get("SELFREWARD_VLLM_ARGS", "{}")),
                                                "disable_log_stats": False})
from selfreward.trainer.backends import Sampling, open_backend
backend = open_backend(Path(work["model"]), 0)
def sampling(n):
    return Sampling(n=n, temperature=work["temperature"], top_p=work["topP"], max_tokens=work["maxTokens"], seed=0)
candidates = backend.generate(backend.render_chat(work["prompts"]), sampling(work["candidates"]))
judge_prompts = backend.render_chat([work["judgeTemplate"].format(prompt=p, response=c.text)
                                     for p, cs in zip(work["prompts"], candidates) for c in cs])
before = counters(backend.llm)
backend.generate(judge_prompts, sampling(work["samples"]))
after = counters(backend.llm)
print(json.dumps({"judgePrefill": {k: after.get(k, 0) - before.get(k, 0) for k in after}}))
'''

HF_LOOP = r'''
import json, sys, time
started = time.monotonic()
work = json.loads(sys.argv[1])
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.manual_seed(0)
tokenizer = AutoTokenizer.from_pretrained(work["model"])
model = AutoModelForCausalLM.from_pretrained(work["model"]).eval()
ready = time.monotonic()
def sample(text, n):
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, do_sample=True, temperature=work["temperature"], top_p=work["topP"],
                             max_new_tokens=work["maxTokens"], num_return_sequences=n,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return [tokenizer.decode(row[ids["input_ids"].shape[1]:], skip_special_tokens=True) for row in out]
candidates = [sample(p, work["candidates"]) for p in work["prompts"]]
judgements = [j for p, cs in zip(work["prompts"], candidates) for c in cs
              for j in sample(work["judgeTemplate"].format(prompt=p, response=c), work["samples"])]
print(json.dumps({"engineStart": ready - started, "candidates": candidates, "judgements": judgements}))
'''


@dataclasses.dataclass(frozen=True)
class Work:
    model: Path
    prompts: list[str]
    candidates: int
    samples: int
    max_tokens: int

    def payload(self, **extra) -> str:
        from selfreward.trainer.rubric import DEFAULT_JUDGE_TEMPLATE

        return json.dumps({"model": str(self.model), "prompts": self.prompts, "candidates": self.candidates,
                           "samples": self.samples, "maxTokens": self.max_tokens, "temperature": TEMPERATURE,
                           "topP": TOP_P, "judgeTemplate": DEFAULT_JUDGE_TEMPLATE.replace("{score_min}", "0")
                           .replace("{score_max}", "5"), **extra})


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, dict]:
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})
    seconds = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"{command[:4]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return seconds, json.loads(lines[-1]) if lines else {}


def output_tokens(model: Path, texts: list[str]) -> int:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    return sum(len(tokenizer.encode(text, add_special_tokens=False)) for text in texts)


def side(name: str, seconds: float, start: float, candidates: list[str], judgements: list[str], model: Path) -> dict:
    tokens = output_tokens(model, candidates + judgements)
    return {"side": name, "seconds": round(seconds, 1), "engineStart": round(start, 1),
            "outputTokens": tokens, "tokensPerSecond": round(tokens / seconds, 1),
            "tokensPerSecondAfterStart": round(tokens / max(seconds - start, 1e-9), 1)}


def raw_vllm(work: Work, engine: dict, env: dict[str, str]) -> dict:
    seconds, out = timed([sys.executable, "-c", RAW_VLLM, work.payload(engine=engine)], env)
    candidates = [c for cs in out["candidates"] for c in cs]
    result = side("raw vLLM", seconds, out["engineStart"], candidates, out["judgements"], work.model)
    result.update({"engine": engine, "env": env, "judgePrefill": out["judgePrefill"]})
    return result


def stage_programs(work: Work) -> dict:
    from selfreward.operator import layout
    from selfreward.operator import plan as planner
    from selfreward.operator.spec import load_run
    from selfreward.operator.stageconfig import stage_config
    from selfreward.trainer.storage import Storage

    run = load_run(REPO / "examples" / "smollm2.yaml")
    spec = run.spec
    spec["generation"].update(candidates=work.candidates, maxTokens=work.max_tokens, temperature=TEMPERATURE, topP=TOP_P)
    spec["judge"].update(samples=work.samples, maxTokens=work.max_tokens, temperature=TEMPERATURE, topP=TOP_P,
                         constrainedScore=False)
    with tempfile.TemporaryDirectory() as scratch:
        root = layout.run_root(scratch, run.namespace, run.name)
        steps = [planner.step_for(spec, root, 2, stage, 1) for stage in ("generate", "judge")]
        steps = [dataclasses.replace(s, inputs={**s.inputs, "model": str(work.model)}, model=str(work.model)) for s in steps]
        storage = Storage()
        prompts = steps[0].inputs["prompts"]
        rows = [{"id": f"p{n}", "prompt": p} for n, p in enumerate(work.prompts)]
        storage.commit(prompts, storage.write_jsonl_file(prompts, "prompts.jsonl", rows))
        configs = [stage_config(run, root, s) for s in steps]
        command = [sys.executable, "-m", "selfreward.trainer", "generate,judge", "--config", json.dumps(configs)]
        seconds, _ = timed(command)
        judged = [row for shard in sorted(Path(steps[1].outputs["judgements"]).rglob("judgements.jsonl"))
                  for row in map(json.loads, shard.read_text().splitlines())]
    start, _ = timed([sys.executable, "-c", "from pathlib import Path; from selfreward.trainer.backends import open_backend; "
                      f"open_backend(Path({str(work.model)!r}), 0)"])
    candidates = [c["text"] for row in judged for c in row["candidates"]]
    judgements = [j for row in judged for c in row["candidates"] for j in c["judgements"]]
    result = side("stage programs", seconds, start, candidates, judgements, work.model)
    _, out = timed([sys.executable, "-c", STAGE_JUDGE_PREFILL, work.payload()])
    result["judgePrefill"] = out["judgePrefill"]  # the judge pass through the stages' backend, counted
    return result


def hf_loop(work: Work) -> dict:
    seconds, out = timed([sys.executable, "-c", HF_LOOP, work.payload()])
    candidates = [c for cs in out["candidates"] for c in cs]
    return side("HF generate loop", seconds, out["engineStart"], candidates, out["judgements"], work.model)


RAW_GRID = [  # (engine arguments, environment): the knobs the CPU build offers
    # The CPU build sizes its KV cache from VLLM_CPU_KVCACHE_SPACE (GiB); unset, it reserves 92% of
    # the machine's memory and refuses to start when anything else holds memory. 1 and 4 GiB
    # measured alike at this batch (2026-11-24), so the grid keeps 4.
    ({"dtype": "auto", "enable_prefix_caching": True}, {"VLLM_CPU_KVCACHE_SPACE": "4"}),
    ({"dtype": "auto", "enable_prefix_caching": True}, {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "4"}),
    ({"dtype": "float32", "enable_prefix_caching": True}, {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "4"}),
    ({"dtype": "auto", "enable_prefix_caching": True, "block_size": 32},
     {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "4"}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--models", nargs="+", default=["smollm2", "tiny"], choices=["smollm2", "tiny"])
    parser.add_argument("--skip-hf", action="store_true", help="leave out the Hugging Face loop (the slow side)")
    args = parser.parse_args()
    prompts = [json.loads(line)["prompt"] for line in (SEED / "ift.jsonl").read_text().splitlines()][: args.prompts]
    results = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores, no GPU", "cases": []}
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models:
            model = SMOLLM2 if name == "smollm2" else make_tiny(Path(scratch) / "tiny")
            work = Work(model, prompts, args.candidates, args.samples, args.max_tokens)
            case = {"model": name, "date": time.strftime("%Y-%m-%d"), "prompts": len(prompts),
                    "candidates": args.candidates, "samples": args.samples, "maxTokens": args.max_tokens,
                    "stages": stage_programs(work)}
            grid = [raw_vllm(work, engine, env) for engine, env in RAW_GRID]
            case["rawGrid"] = grid
            case["raw"] = max(grid, key=lambda r: r["tokensPerSecond"])
            case["separateJudgeRequests"] = raw_vllm_separate(work, case["raw"])
            if not args.skip_hf:
                case["hf"] = hf_loop(work)
            case["ratios"] = ratios(case)
            results["cases"].append(case)
            print(json.dumps({k: v for k, v in case.items() if k != "rawGrid"}, indent=2), flush=True)
    measured = {case["model"] for case in results["cases"]}
    if RESULT.exists():  # keep the other model's case from an earlier run (--models measures one)
        earlier = json.loads(RESULT.read_text())
        results["cases"] = [c for c in earlier["cases"] if c["model"] not in measured] + results["cases"]
    RESULT.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


def raw_vllm_separate(work: Work, best: dict) -> dict:
    """The judge pass as K requests of one sample each, with nothing shared between them (prefix
    caching off), which is what a per-request loop prefills."""
    engine = {**best["engine"], "enable_prefix_caching": False}
    command = [sys.executable, "-c", RAW_VLLM, work.payload(engine=engine, separateJudgeRequests=True)]
    _, out = timed(command, best["env"])
    return out["judgePrefill"]


def ratios(case: dict) -> dict:
    stages, raw = case["stages"], case["raw"]
    found = {"stagesVsRawVllm": round(stages["tokensPerSecond"] / raw["tokensPerSecond"], 3),
             "stagesVsRawVllmAfterStart": round(stages["tokensPerSecondAfterStart"] / raw["tokensPerSecondAfterStart"], 3)}
    if "hf" in case:
        found["stagesVsHfLoop"] = round(stages["tokensPerSecond"] / case["hf"]["tokensPerSecond"], 2)
    separate = case["separateJudgeRequests"]

    def computed(c):  # prompt tokens the engine ran through the model
        return c.get("prompt_tokens", 0) - c.get("prefix_cache_hits", 0)
    if computed(raw["judgePrefill"]):  # vLLM's own n=K with prefix caching
        found["judgePrefillSeparateVsRawN"] = round(computed(separate) / computed(raw["judgePrefill"]), 2)
    if computed(stages.get("judgePrefill", {})):  # the stages' backend: n=K, its CPU block size
        found["judgePrefillSeparateVsStages"] = round(computed(separate) / computed(stages["judgePrefill"]), 2)
    return found


def make_tiny(target: Path) -> Path:
    subprocess.run([sys.executable, "-m", "selfreward.trainer.tiny", str(target), "--corpus",
                    str(SEED / "ift.jsonl"), str(SEED / "eft.jsonl")], check=True, capture_output=True)
    return target


if __name__ == "__main__":
    main()
