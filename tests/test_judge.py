"""`zoo judge` against a local server that speaks Ollama's /api/chat and the OpenAI /v1/chat/completions wire
formats (started by the test, on 127.0.0.1): the book's single prompt, the comparative shuffled prompt, the key
from the environment, resuming, and one line for a judge that refuses, times out or answers without a number."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from zoo.judge import book_prompt, comparative_prompt
from zoo.tasks.instruct.data import FORMATS

from .conftest import one_process

ITEMS = [{"instruction": f"Say {w}.", "input": "" if i % 2 else "quietly", "output": w.capitalize() + "."}
         for i, w in enumerate(["yes", "no", "maybe", "always", "never", "soon"])]


def score_of(response: str) -> int | None:
    """The test judge's rule: 10 points a word, none for an answer saying NO_NUMBER."""
    return None if "NO_NUMBER" in response else min(100, 10 * len(response.split()))


class Judge:
    """A judge server: records every request; `fail_after` answers HTTP 500 from that request on; `delay` waits."""

    def __init__(self):
        self.requests: list[dict] = []
        self.fail_after: int | None = None
        self.delay = 0.0
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                judge.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                time.sleep(judge.delay)
                if judge.fail_after is not None and len(judge.requests) > judge.fail_after:
                    self.send_response(500)
                    self.end_headers()
                    return
                prompt = body["messages"][0]["content"]
                if self.path == "/api/chat":
                    response = re.search(r"score the model response `(.*)` on a scale", prompt, re.S).group(1)
                    score = score_of(response)
                    content = "I cannot tell." if score is None else f"{score}"
                    reply = {"model": body["model"], "message": {"role": "assistant", "content": content},
                             "done": True}
                elif self.path == "/v1/chat/completions":
                    answers = re.findall(r"Answer (\d+):\n(.*?)(?=\n\nAnswer \d+:|\n\nScore each)", prompt, re.S)
                    lines = [f"Answer {n}: {score_of(text)}" for n, text in answers if score_of(text) is not None]
                    reply = {"id": "x", "object": "chat.completion", "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": "\n".join(lines)},
                         "finish_reason": "stop"}]}
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server():
    s = Judge()
    yield s
    s.close()


def fake_run(root: Path, name: str, answers: list[str], test_loss: float) -> Path:
    run = root / name
    run.mkdir(parents=True)
    rows = [{**item, "model_response": a} for item, a in zip(ITEMS, answers, strict=True)]
    (run / "test_responses.json").write_text(json.dumps(rows), encoding="utf-8")
    (run / "summary.json").write_text(json.dumps({"test_loss": test_loss, "format_following": 0.5}))
    return run


def test_one_run_is_scored_with_the_books_prompt_through_ollama(server, tmp_path):
    answers = ["Yes.", "No no.", "NO_NUMBER here", "Always, always, always.", "Never.", "Soon enough."]
    run = fake_run(tmp_path, "a", answers, 3.5)
    result = one_process("judge", run, "--judge", server.url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    first = server.requests[0]
    assert first["path"] == "/api/chat" and first["body"]["model"] == "llama3" and first["body"]["stream"] is False
    assert first["body"]["options"]["temperature"] == 0 and first["auth"] is None
    prompt = FORMATS["alpaca"].prompt(ITEMS[0]["instruction"], ITEMS[0]["input"])
    assert first["body"]["messages"] == [{"role": "user", "content": book_prompt(prompt, "Yes.", "Yes.")}]
    expected = [s for a in answers if (s := score_of(a)) is not None]
    assert f"| a | 3.500 | {sum(expected) / len(expected):.2f} | 5 | 1 | 0.50 |" in result.stdout
    saved = json.loads((tmp_path / "judgement.json").read_text())
    assert saved["results"][0]["unscored"] == 1 and saved["items"]["2"]["scores"] == [None]
    assert saved["items"]["2"]["judge_answer"] == "I cannot tell."
    again = one_process("judge", run, "--judge", server.url, cwd=tmp_path)  # resumes: nothing to ask
    assert again.returncode == 0 and len(server.requests) == 6 and "0 asked now" in again.stderr


def test_several_runs_share_one_shuffled_prompt_per_item_through_the_openai_api(server, tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_JUDGE_API_KEY", "secret-key")
    runs = [fake_run(tmp_path, "short", ["Yes."] * 6, 3.6),
            fake_run(tmp_path, "long", ["Yes it is so."] * 6, 3.2),
            fake_run(tmp_path, "mid", ["Yes, it is."] * 6, 3.4)]
    result = one_process("judge", *runs, "--judge", server.url + "/v1", "--judge-model", "judge-1", "--out",
                         tmp_path / "j.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(server.requests) == 6 and all(r["auth"] == "Bearer secret-key" for r in server.requests)
    assert server.requests[0]["body"]["model"] == "judge-1" and server.requests[0]["body"]["temperature"] == 0
    saved = json.loads((tmp_path / "j.json").read_text())
    orders = [saved["items"][str(i)]["order"] for i in range(6)]
    assert len({tuple(o) for o in orders}) > 1  # shuffled, and recorded
    item = saved["items"]["0"]
    answers = [["Yes.", "Yes it is so.", "Yes, it is."][j] for j in item["order"]]
    prompt = FORMATS["alpaca"].prompt(ITEMS[0]["instruction"], ITEMS[0]["input"])
    assert server.requests[0]["body"]["messages"][0]["content"] == comparative_prompt(prompt, "Yes.", answers)
    means = {r["run"]: r["ift_score"] for r in saved["results"]}
    assert means == {"short": 10.0, "long": 40.0, "mid": 30.0}  # scores went back to their runs
    assert "secret-key" not in (tmp_path / "j.json").read_text()
    assert "| long | 3.200 | 40.00 | 6 | 0 | 0.50 |" in result.stdout
    other = one_process("judge", *runs[:2], "--judge", server.url + "/v1", "--judge-model", "judge-1", "--out",
                        tmp_path / "j.json", cwd=tmp_path)
    assert other.returncode == 2 and "holds scores of another judging" in other.stderr


def test_a_judge_that_stops_answering_keeps_every_score_and_the_rerun_goes_on(server, tmp_path):
    run = fake_run(tmp_path, "a", ["Yes."] * 6, 3.5)
    server.fail_after = 3
    failed = one_process("judge", run, "--judge", server.url, cwd=tmp_path)
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1 and "HTTP 500" in failed.stderr, failed.stderr
    assert "the 3 items scored so far are kept" in failed.stderr
    assert len(json.loads((tmp_path / "judgement.json").read_text())["items"]) == 3
    server.fail_after = None
    done = one_process("judge", run, "--judge", server.url, cwd=tmp_path)
    assert done.returncode == 0 and "3 asked now, 6 items judged" in done.stderr
    assert len(server.requests) == 4 + 3  # the failed one is asked again


def test_unreachable_slow_and_missing_judges_are_one_line(server, tmp_path):
    run = fake_run(tmp_path, "a", ["Yes."] * 6, 3.5)
    closed = Judge()
    url = closed.url
    closed.close()
    gone = one_process("judge", run, "--judge", url, cwd=tmp_path)
    assert gone.returncode == 2 and "cannot be reached" in gone.stderr and gone.stderr.count("\n") == 1
    server.delay = 1.0
    slow = one_process("judge", run, "--judge", server.url, "--timeout", "0.2", cwd=tmp_path)
    assert slow.returncode == 2 and "did not answer in time" in slow.stderr, slow.stderr
    missing = one_process("judge", run, cwd=tmp_path)
    assert missing.returncode == 2 and "--judge" in missing.stderr and missing.stderr.count("\n") == 1
    not_ift = one_process("judge", tmp_path, "--judge", server.url, cwd=tmp_path)
    assert not_ift.returncode == 2 and "has no test_responses.json" in not_ift.stderr
    no_model = one_process("judge", run, "--judge", server.url + "/v1", cwd=tmp_path)
    assert no_model.returncode == 2 and "--judge-model is needed" in no_model.stderr


def test_a_local_transformers_judge(tmp_path):
    transformers = pytest.importorskip("transformers")
    import torch

    from zoo.tokenizers import Gpt2Tokenizer

    folder = tmp_path / "judge"
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=512))
    model.save_pretrained(folder)
    Gpt2Tokenizer().to_hf(transformers).save_pretrained(folder)
    run = fake_run(tmp_path, "a", ["Yes."] * 6, 3.5)
    result = one_process("judge", run, "--judge", f"hf:{folder}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "judgement.json").read_text())
    assert saved["results"][0]["scored"] + saved["results"][0]["unscored"] == 6 and saved["judge"] == f"hf:{folder}"
