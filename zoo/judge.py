"""Judging instruction-tuned models by their answers (`zoo judge`): an LLM scores each test answer from 0 to 100.

With one run, each answer is scored alone with the book's prompt (Raschka ch. 7: the input, the correct output and
the model's response, "Respond with the integer number only"). With several, every run's answer to one item goes
into one prompt in a shuffled order (Giles Thomas's comparative judging: scoring models apart gave inconsistent
scores), the order recorded. Judges: an Ollama chat endpoint (`/api/chat`, the book's), an OpenAI-compatible
`/v1/chat/completions` endpoint (vLLM, llama.cpp's server, hosted models; the key from an environment variable,
never written anywhere), or a local transformers folder (`hf:PATH`). Scores go to a JSON file after every item,
so a judge that stops answering loses nothing and a rerun asks only for what is missing; an answer with no
usable number is counted as unscored, never guessed.
"""

from __future__ import annotations

import json
import os
import random
import re
import statistics
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.errors import ZooError

KEY_ENV = ("ZOO_JUDGE_API_KEY", "OPENAI_API_KEY")


# ------------------------------------------------------------------------------------------- prompts
def book_prompt(prompt: str, output: str, response: str) -> str:
    """The book's scoring prompt for one answer."""
    return (f"Given the input `{prompt}` and correct output `{output}`, score the model response `{response}` on a "
            "scale from 0 to 100, where 100 is the best score. Respond with the integer number only.")


def comparative_prompt(prompt: str, output: str, responses: list[str]) -> str:
    """All models' answers to one item in one prompt (in the order given), each to be scored 0-100."""
    answers = "\n\n".join(f"Answer {i + 1}:\n{r}" for i, r in enumerate(responses))
    return (f"Here is an instruction given to {len(responses)} language models, the correct output, and each "
            f"model's answer.\n\nInstruction:\n{prompt}\n\nCorrect output:\n{output}\n\n{answers}\n\n"
            "Score each answer on a scale from 0 to 100, where 100 is the best score, judging every answer by the "
            f"same standard. Respond with {len(responses)} lines and nothing else, one per answer in order, each "
            "of the form `Answer N: SCORE` with SCORE an integer.")


def parse_single(text: str) -> int | None:
    """The score in a judge's answer to the book's prompt: its first integer, if it is 0-100."""
    match = re.search(r"-?\d+", text or "")
    if not match:
        return None
    value = int(match.group())
    return value if 0 <= value <= 100 else None


def parse_comparative(text: str, n: int) -> list[int | None]:
    """The scores of `Answer N: SCORE` lines (None for an answer the judge did not score with 0-100)."""
    out: list[int | None] = [None] * n
    for match in re.finditer(r"Answer\s*(\d+)\s*[:=\-]\s*(-?\d+)", text or "", flags=re.IGNORECASE):
        i, value = int(match.group(1)) - 1, int(match.group(2))
        if 0 <= i < n and out[i] is None and 0 <= value <= 100:
            out[i] = value
    return out


# ------------------------------------------------------------------------------------------- judges
class JudgeError(ZooError):
    """The judge cannot be reached or answered with something that is not its API's."""


@dataclass
class HttpJudge:
    """A chat endpoint: `ollama` (POST {url}/api/chat) or `openai` (POST {url}/v1/chat/completions)."""

    url: str
    api: str
    model: str
    timeout: float = 120.0
    seed: int = 123

    @property
    def name(self) -> str:
        return f"{self.api}:{self.model}@{self.url}"

    def ask(self, prompt: str) -> str:
        messages = [{"role": "user", "content": prompt}]
        if self.api == "ollama":
            endpoint = self.url.rstrip("/") + "/api/chat"
            body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": False,
                                    "options": {"seed": self.seed, "temperature": 0, "num_ctx": 2048}}
            headers = {}
        else:
            base = self.url.rstrip("/")
            endpoint = base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")
            body = {"model": self.model, "messages": messages, "temperature": 0, "seed": self.seed}
            key = next((os.environ[k] for k in KEY_ENV if os.environ.get(k)), None)
            headers = {"Authorization": f"Bearer {key}"} if key else {}
        request = urllib.request.Request(endpoint, data=json.dumps(body).encode("utf-8"), method="POST",
                                         headers={"Content-Type": "application/json", **headers})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                data = json.loads(reply.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            raise JudgeError(f"the judge at {endpoint} answered HTTP {exc.code} ({exc.reason}); check --judge, "
                             f"--judge-model and the key in ${KEY_ENV[0]}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            what = "did not answer in time" if "timed out" in str(reason) else f"cannot be reached ({reason})"
            raise JudgeError(f"the judge at {endpoint} {what}; start it or check --judge (raise --timeout for a "
                             "slow one)") from None
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise JudgeError(f"the judge at {endpoint} did not answer with JSON; is it an {self.api} API?") from None
        try:
            if self.api == "ollama":
                return str(data["message"]["content"])
            return str(data["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"the judge at {endpoint} answered without a message (not the {self.api} API's "
                             "shape); check --api") from None


@dataclass
class LocalJudge:
    """A transformers folder, greedy (its chat template where it has one)."""

    path: str
    max_new_tokens: int = 96

    def __post_init__(self):
        try:
            import transformers
        except ImportError:
            raise ZooError("a local judge needs transformers: pip install 'zoo[hf]'") from None
        folder = Path(self.path).expanduser()
        if not (folder / "config.json").is_file():
            raise ZooError(f"--judge hf:{self.path}: {folder} is not a transformers folder (no config.json)")
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        self.model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()

    @property
    def name(self) -> str:
        return f"hf:{self.path}"

    def ask(self, prompt: str) -> str:
        import torch

        if getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                     return_tensors="pt")
        else:
            ids = self.tokenizer(prompt, return_tensors="pt").input_ids
        limit = getattr(self.model.config, "n_positions", None) or getattr(self.model.config,
                                                                           "max_position_embeddings", None)
        if limit:
            ids = ids[:, -(limit - self.max_new_tokens):]
        with torch.no_grad():
            out = self.model.generate(ids, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.eos_token_id)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def make_judge(spec: str, api: str, model: str, timeout: float):
    if not spec:
        raise ZooError("--judge is empty; give an Ollama or OpenAI-compatible URL (http://localhost:11434) or "
                       "hf:PATH")
    if spec.startswith("hf:"):
        return LocalJudge(spec.removeprefix("hf:"))
    if not re.match(r"https?://", spec):
        raise ZooError(f"--judge {spec!r} is neither an http(s) URL nor hf:PATH")
    if api == "auto":
        api = "openai" if re.search(r"/v1/?$", spec) else "ollama"
    if not model:
        if api == "openai":
            raise ZooError("--judge-model is needed for an OpenAI-compatible judge (e.g. --judge-model gpt-4o-mini)")
        model = "llama3"
    return HttpJudge(spec, api, model, timeout)


# ------------------------------------------------------------------------------------------- runs
@dataclass
class Answers:
    """A run's answers to its test split and what its summary says of it."""

    run: str
    path: Path
    rows: list[dict]
    summary: dict
    prompt_format: str


def read_answers(run: str) -> Answers:
    path = Path(run)
    file = path / "test_responses.json"
    if not file.is_file():
        raise ZooError(f"{run} has no test_responses.json; judge an instruction run (zoo finetune-instruct) that "
                       "finished")
    try:
        rows = json.loads(file.read_text(encoding="utf-8"))
        summary = json.loads((path / "summary.json").read_text(encoding="utf-8")) \
            if (path / "summary.json").is_file() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ZooError(f"{file} cannot be read ({exc}); it is not what zoo wrote") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "model_response" in r for r in rows):
        raise ZooError(f"{file} is not a list of records with model_response")
    from zoo.recipe import completed, flatten, read_toml

    fmt = "alpaca"
    if (path / "recipe.toml").is_file():
        fmt = flatten(completed(read_toml(path / "recipe.toml"))).get("task.prompt_format", "alpaca")
    return Answers(path.name, path, rows, summary if isinstance(summary, dict) else {}, fmt)


def _key(run: Answers) -> str:
    return str(run.path.resolve())


def judge(runs: list[Answers], judge_, out: Path, seed: int = 123, progress=print) -> dict:
    """Score every answer not yet in `out` (written after each item); returns the judgement."""
    from zoo.tasks.instruct.data import FORMATS

    if len({len(r.rows) for r in runs}) > 1:
        raise ZooError("the runs answered different numbers of test items ("
                       + ", ".join(f"{r.run}: {len(r.rows)}" for r in runs) + "); judge runs of the same data")
    mode = "single" if len(runs) == 1 else "comparative"
    state = load_state(out)
    if state and (state.get("judge") != judge_.name or state.get("mode") != mode
                  or state.get("runs") != [_key(r) for r in runs]):
        raise ZooError(f"{out} holds scores of another judging (judge {state.get('judge')}, {state.get('mode')} of "
                       f"{len(state.get('runs', []))} runs); give another --out, or move it away to start over")
    state = state or {"judge": judge_.name, "mode": mode, "seed": seed, "runs": [_key(r) for r in runs],
                      "names": [r.run for r in runs], "items": {}}
    rng = random.Random(seed)
    orders = [rng.sample(range(len(runs)), len(runs)) for _ in runs[0].rows]  # fixed by the seed, done or not
    fmt = FORMATS.get(runs[0].prompt_format, FORMATS["alpaca"])
    asked = 0
    for i, row in enumerate(runs[0].rows):
        if str(i) in state["items"]:
            continue
        prompt = fmt.prompt(row.get("instruction", ""), row.get("input") or "")
        if mode == "single":
            text = judge_.ask(book_prompt(prompt, row.get("output", ""), row["model_response"]))
            scores = [parse_single(text)]
            order = [0]
        else:
            order = orders[i]
            text = judge_.ask(comparative_prompt(prompt, row.get("output", ""),
                                                 [runs[j].rows[i]["model_response"] for j in order]))
            shuffled = parse_comparative(text, len(runs))
            scores = [None] * len(runs)
            for position, j in enumerate(order):
                scores[j] = shuffled[position]
        state["items"][str(i)] = {"order": order, "scores": scores, "judge_answer": text}
        save_state(out, state)
        asked += 1
        if asked % 10 == 0:
            progress(f"judged {len(state['items'])}/{len(runs[0].rows)} items")
    state["asked"] = asked
    return state


def load_state(out: Path) -> dict:
    if not out.is_file():
        return {}
    try:
        data = json.loads(out.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ZooError(f"{out} is not a judgement zoo wrote (not JSON); give another --out") from None
    if not isinstance(data, dict) or not isinstance(data.get("items"), dict):
        raise ZooError(f"{out} is not a judgement zoo wrote; give another --out")
    return data


def save_state(out: Path, state: dict) -> None:
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, out)


def table(runs: list[Answers], state: dict) -> tuple[list[dict], str]:
    """Per run: mean score, n scored, unscored, test (response) loss, format-following share; and a markdown
    table in Giles Thomas's style."""
    rows = []
    for j, run in enumerate(runs):
        scores = [item["scores"][j] for item in state["items"].values()]
        scored = [s for s in scores if s is not None]
        rows.append({"run": run.run, "test_loss": run.summary.get("test_loss"),
                     "ift_score": statistics.fmean(scored) if scored else None, "scored": len(scored),
                     "unscored": len(scores) - len(scored), "items": len(run.rows),
                     "format_following": run.summary.get("format_following")})
    lines = ["| run | test loss | IFT score | scored | unscored | format following |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        cells = [r["run"], f"{r['test_loss']:.3f}" if r["test_loss"] is not None else "–",
                 f"{r['ift_score']:.2f}" if r["ift_score"] is not None else "–", str(r["scored"]),
                 str(r["unscored"]), f"{r['format_following']:.2f}" if r["format_following"] is not None else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return rows, "\n".join(lines)
