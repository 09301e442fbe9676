"""vlprompt.protocol: torch-free, and the output tree built and parsed by the same layouts."""
import ast
import os
import os.path as osp
import subprocess
import sys

import pytest

from vlprompt.protocol import (
    DATASETS_11,
    DG_TARGETS,
    LAYOUTS,
    XD_SOURCE,
    XD_TARGETS,
    TreeError,
    config_folder,
    describe_run_dir,
    layout_for,
    option_slug,
    parse_run_dir,
    recipe_config,
    family_config,
    run_dir,
)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

# every writable (protocol, role) with a dataset that fits it
CASES = [
    ("base2new", "base", "dtd"),
    ("base2new", "novel", "imagenet"),
    ("few_shot", "test", "eurosat"),
    ("transfer", "source", "imagenet"),
    ("cross_dataset", "target", "oxford_pets"),
    ("domain_generalization", "target", "imagenet_r"),
]


def test_imports_nothing_heavy():
    """The package imports only the standard library (checked in a fresh interpreter and from the source)."""
    code = ("import sys, vlprompt.protocol as p; heavy = [m for m in ('torch', 'yaml', 'numpy', 'yacs', "
            "'vlprompt.engine', 'vlprompt.sweep', 'vlprompt.results') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    folder = osp.join(ROOT, "vlprompt", "protocol")
    for name in os.listdir(folder):
        if not name.endswith(".py"):
            continue
        tree = ast.parse(open(osp.join(folder, name)).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module.split(".")[0] in sys.stdlib_module_names, (name, node.module)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    assert a.name.split(".")[0] in sys.stdlib_module_names, (name, a.name)


def test_dataset_lists():
    assert len(DATASETS_11) == 11 and DATASETS_11[0] == "imagenet" and DATASETS_11[-1] == "ucf101"
    assert XD_SOURCE not in XD_TARGETS and len(XD_TARGETS) == 10
    assert DG_TARGETS == ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
    for d in DATASETS_11 + DG_TARGETS:  # every listed dataset has its yaml
        assert osp.isfile(osp.join(ROOT, "configs", "datasets", f"{d}.yaml")), d


@pytest.mark.parametrize("protocol,role,dataset", CASES)
@pytest.mark.parametrize("config", ["vit_b16_ctxv1", "cfg_8shots", "a+b_c-d.e", "x_max_epoch2"])
def test_round_trip(protocol, role, dataset, config):
    fields = dict(dataset=dataset, trainer="MaPLe", config=config, shots=16, seed=3)
    rel = run_dir(protocol, role, **fields)
    got = parse_run_dir(osp.join("/some/output", rel))
    expected = "transfer" if role == "source" else protocol
    assert got == dict(protocol=expected, role=role, backbone=None, **fields)
    assert describe_run_dir(osp.join("/some/output", rel)) == got
    assert run_dir(got["protocol"], got["role"], **{k: got[k] for k in fields}) == rel


def test_tree_is_the_coop_maple_tree():
    kw = dict(trainer="T", config="c", seed=1)
    assert run_dir("base2new", "base", dataset="dtd", shots=16, **kw) == "base2new/train_base/dtd/shots_16/T/c/seed1"
    assert run_dir("base2new", "novel", dataset="dtd", shots=16, **kw) == "base2new/test_new/dtd/shots_16/T/c/seed1"
    assert run_dir("cross_dataset", "source", dataset="imagenet", shots=16, **kw) == "imagenet/T/c_16shots/seed1"
    assert run_dir("cross_dataset", "target", dataset="dtd", shots=16, **kw) == "evaluation/T/c_16shots/dtd/seed1"
    assert run_dir("few_shot", "test", dataset="dtd", shots=4, **kw) == "few_shot/dtd/T/c/shots_4/seed1"
    assert run_dir("few_shot", "test", dataset="dtd", shots=4, root="/o", **kw) == "/o/few_shot/dtd/T/c/shots_4/seed1"


def test_read_only_coop_layouts():
    assert parse_run_dir("/o/evaluation/CoOp/vit_b16_ep50_16shots/nctx16_cscFalse_ctpend/imagenet_r/seed3") == dict(
        protocol="domain_generalization", role="target", dataset="imagenet_r", trainer="CoOp",
        config="vit_b16_ep50/nctx16_cscFalse_ctpend", shots=16, seed=3, backbone=None)
    got = parse_run_dir("/o/dtd/CoOp/rn50_4shots/nctx16_cscFalse_ctpend/seed1")
    assert got["protocol"] == "few_shot" and got["shots"] == 4 and got["config"] == "rn50/nctx16_cscFalse_ctpend"
    assert parse_run_dir("/o/dtd/CoOp/rn50_4shots/seed1")["role"] == "test"
    assert parse_run_dir("/o/imagenet/CoOp/rn50_16shots/nctx16_cscFalse_ctpend/seed2")["role"] == "source"
    assert all(lay.readonly for lay in LAYOUTS if lay.name.startswith("coop_"))


@pytest.mark.parametrize("path", [
    "/o/somewhere/else/seed1",
    "/o/base2new/train_base/dtd/shots_x/T/c/seed1",
    "/o/base2new/train_new/dtd/shots_16/T/c/seed1",
    "/o/few_shot/dtd/T/c/shots_4/seedX",
    "/o/unknown_ds/T/c_16shots/seed1",  # not a known dataset and not the source
    "seed1",
])
def test_outside_the_tree(path):
    assert parse_run_dir(path) is None and describe_run_dir(path) is None


def test_source_follows_the_source_dataset():
    assert parse_run_dir("/o/caltech101/T/c_16shots/seed1")["protocol"] == "few_shot"  # CoOp's few-shot tree
    assert parse_run_dir("/o/caltech101/T/c_16shots/seed1", source="caltech101")["role"] == "source"
    assert run_dir("transfer", "source", dataset="dtd", trainer="T", config="c", shots=16, seed=1,
                   source="dtd") == "dtd/T/c_16shots/seed1"


def test_build_errors():
    kw = dict(trainer="T", config="c", shots=16, seed=1)
    with pytest.raises(TreeError, match="Unknown protocol 'b2n'"):
        run_dir("b2n", "base", dataset="dtd", **kw)
    with pytest.raises(TreeError, match=r"few_shot has no role 'novel' \(roles: test\)"):
        run_dir("few_shot", "novel", dataset="dtd", **kw)
    with pytest.raises(TreeError, match="imagenet_a is a domain_generalization target, not a cross_dataset target"):
        run_dir("cross_dataset", "target", dataset="imagenet_a", **kw)
    with pytest.raises(TreeError, match="trains on imagenet, not dtd"):
        run_dir("transfer", "source", dataset="dtd", **kw)
    with pytest.raises(TreeError, match="config='a/b'"):
        run_dir("base2new", "base", dataset="dtd", trainer="T", config="a/b", shots=16, seed=1)
    with pytest.raises(TreeError, match="seed must be a non-negative int"):
        run_dir("base2new", "base", dataset="dtd", trainer="T", config="c", shots=16, seed="1")
    assert layout_for("domain_generalization", "source").name == "source"


def test_option_slug_and_config_folder():
    assert option_slug([]) == ""
    assert option_slug(["OPTIM.MAX_EPOCH", "2"]) == "_max_epoch2"
    assert option_slug(["TRAINER.APLE.ADAPTER", "reference_code", "TRAINER.APLE.N_CTX", 4]) == \
        "_adapterreference_code_n_ctx4"
    assert config_folder("vit_b16", "_t", ["A.B", "1"]) == "vit_b16_t_b1"
    unsafe = option_slug(["A.B", "x y"])
    assert unsafe.startswith("_opts-") and len(unsafe) == len("_opts-") + 10
    assert unsafe != option_slug(["A.B", "x z"]) and unsafe == option_slug(["A.B", "x y"])
    long = option_slug(["TRAINER.X.SOMETHING_LONG", "v" * 60])
    assert long.startswith("_opts-")
    with pytest.raises(TreeError, match="KEY VALUE pairs"):
        option_slug(["A.B"])
    with pytest.raises(TreeError, match="must not contain '/'"):
        config_folder("CoOp/vit_b16")


def test_recipe_rules():
    rec = {"config": "main", "per_dataset": {"imagenet": "inet"}, "per_shots": {"1": "one"}}
    assert recipe_config(rec, "dtd", 16) == "main"
    assert recipe_config(rec, "dtd", 1) == "one"
    assert recipe_config(rec, "imagenet", 1) == "inet"  # per_dataset wins
    assert recipe_config(None, "dtd", 1) is None
    assert family_config(rec, "imagenet", 16, "inet") == "main"
    assert family_config(rec, "dtd", 16, "inet") is None  # not where the recipe uses it
    assert family_config(rec, "dtd", 16, "main") is None


# --------------------------------------------------------------------------- the backbone level
BACKBONES = ["ViT-B/16", "ViT-B-16-SigLIP@webli", "EVA02-B-16@merged2b_s8b_b131k", "ViT-L/14@336px@openai",
             "hf-hub:timm/ViT-B-16-SigLIP"]


@pytest.mark.parametrize("protocol,role,dataset", CASES)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_backbone_level_round_trip_and_never_the_default_folder(protocol, role, dataset, backbone):
    fields = dict(dataset=dataset, trainer="MaPLe", config="vit_b16_c2_ep5_batch4_2ctx", shots=16, seed=2)
    rel = run_dir(protocol, role, backbone=backbone, **fields)
    default = run_dir(protocol, role, **fields)
    parts = rel.split("/")
    level = [i for i, p in enumerate(parts) if p.startswith("bb-")]
    assert len(level) == 1 and parts[:level[0]] + parts[level[0] + 1:] == default.split("/")  # one level more
    assert parts[level[0] - 1].startswith("vit_b16_c2_ep5_batch4_2ctx")  # right after <cfg>
    got = describe_run_dir(osp.join("/out", rel))
    expected = "transfer" if role == "source" else protocol
    assert got == dict(protocol=expected, role=role, backbone=backbone, **fields)
    assert run_dir(got["protocol"], got["role"], backbone=got["backbone"], **{k: got[k] for k in fields}) == rel
    assert describe_run_dir(osp.join("/out", default))["backbone"] is None


def test_backbone_folders_are_distinct_and_readable():
    from vlprompt.protocol import backbone_folder, backbone_from_folder

    folders = [backbone_folder(b) for b in BACKBONES + ["ViT-B-16", "ViT-B-16-SigLIP", "ViT-B-16-SigLIP@webli2"]]
    assert len(set(folders)) == len(folders)
    assert backbone_folder("ViT-B-16-SigLIP@webli") == "bb-ViT-B-16-SigLIP@webli"
    assert backbone_folder("ViT-B/16") == "bb-ViT-B%2F16"
    assert all(backbone_from_folder(f) == b for f, b in zip(folders, BACKBONES))
    rel = run_dir("base2new", "base", dataset="dtd", trainer="VPT", config="vit_b16_c2_ep5_batch4_4", shots=16, seed=1,
                  backbone="ViT-B-16-SigLIP@webli")
    assert rel == "base2new/train_base/dtd/shots_16/VPT/vit_b16_c2_ep5_batch4_4/bb-ViT-B-16-SigLIP@webli/seed1"
    # CoOp's own nctx variant folder is not a backbone level (read-only layouts still parse)
    got = parse_run_dir("/o/imagenet/CoOp/vit_b16_ep50_16shots/nctx16_cscFalse_ctpend/seed1")
    assert got["config"] == "vit_b16_ep50/nctx16_cscFalse_ctpend" and got["backbone"] is None
    with pytest.raises(TreeError, match="NAME or NAME@TAG"):
        run_dir("base2new", "base", dataset="dtd", trainer="T", config="c", shots=16, seed=1, backbone="ViT-B/16@")


def test_backbone_specs_labels_and_family_configs():
    from vlprompt.protocol import (BackboneError, backbone_label, backbone_of_config_name, family_config_name,
                                   parse_backbone, same_backbone)

    assert parse_backbone("default") is None
    b = parse_backbone("ViT-B-16-SigLIP@webli")
    assert (b.name, b.tag, str(b)) == ("ViT-B-16-SigLIP", "webli", "ViT-B-16-SigLIP@webli")
    assert (parse_backbone("ViT-L/14@336px").name, parse_backbone("ViT-L/14@336px").tag) == ("ViT-L/14@336px", "")
    assert parse_backbone("ViT-L/14@336px@openai").tag == "openai"
    for bad in ("", "@webli", "ViT-B-16@", "a@b@c"):
        with pytest.raises(BackboneError, match="NAME or NAME@TAG"):
            parse_backbone(bad)
    # OpenAI's weights have one label whichever way they are named
    assert backbone_label("ViT-B/16") == backbone_label("ViT-B/16", "openai") == "ViT-B/16"
    assert backbone_label("ViT-B-16-quickgelu", "openai") == "ViT-B/16"
    assert backbone_label("ViT-B-16", "laion2b_s34b_b88k") == "ViT-B-16@laion2b_s34b_b88k"
    assert same_backbone(("ViT-B-16-SigLIP", ""), ("ViT-B-16-SigLIP", "webli"))
    assert not same_backbone(("ViT-B-16-SigLIP", "webli"), ("ViT-B-16-SigLIP", "other"))
    assert not same_backbone(("ViT-B/16", ""), ("EVA02-B-16", "merged2b_s8b_b131k"))
    assert family_config_name("vit_b16_ctxv1", "ViT-B-16-SigLIP") == "siglip_b16_ctxv1"
    assert family_config_name("vit_b16_ep50_ctxv1", "RN50") == "rn50_ep50_ctxv1"
    assert family_config_name("CoOp/vit_b16", "EVA02-B-16") == "CoOp/eva02_b16"
    assert family_config_name("rn50_imagenet", "ViT-B-16-quickgelu") == "vit_b16_imagenet"
    assert family_config_name("vit_b16_ctxv1", "ViT-B/16") is None  # its own
    assert family_config_name("vit_b16_ctxv1", "PE-Core-B-16") is None  # no configs of its own
    assert family_config_name("toy", "RN50") is None
    assert backbone_of_config_name("rn50_ep50") == "RN50" and backbone_of_config_name("vit_b16") == "ViT-B/16"
    assert backbone_of_config_name("siglip_b16_ctxv1/nctx16_cscFalse_ctpend") == "ViT-B-16-SigLIP"
    assert backbone_of_config_name("toy") is None and backbone_of_config_name("rn501") is None


def test_config_prefixes_match_the_config_files():
    """Every configs/trainers/*/<prefix>*.yaml names the backbone CONFIG_PREFIXES gives its prefix (so the
    sweep's choice of a method's config for a backbone is data, checked here), and the CLIP name table
    is the backbone layer's."""
    import yaml

    from vlprompt.clip.backbone import CLIP_NAME_TO_OPENCLIP
    from vlprompt.protocol import CLIP_NAMES, backbone_of_config_name

    assert CLIP_NAMES == CLIP_NAME_TO_OPENCLIP
    folder = osp.join(ROOT, "configs", "trainers")
    checked = 0
    for method in sorted(os.listdir(folder)):
        for f in sorted(os.listdir(osp.join(folder, method))):
            want = backbone_of_config_name(f[:-5]) if f.endswith(".yaml") else None
            if want is None:
                continue
            data = yaml.safe_load(open(osp.join(folder, method, f))) or {}
            got = ((data.get("MODEL") or {}).get("BACKBONE") or {}).get("NAME")
            assert got == want, f"configs/trainers/{method}/{f}: MODEL.BACKBONE.NAME {got!r}, its prefix says {want}"
            checked += 1
    assert checked > 80
    assert osp.isfile(osp.join(folder, "CoOp", "siglip_b16_ctxv1.yaml"))


def test_a_registered_protocol_is_part_of_the_tree_and_the_plan(tmp_path):
    """A protocol whose second step wraps the first step's finished model with extra options (the shape of
    test-time adaptation): its folders are built and parsed, the sweep plans it from a card that names no
    config for it, and an unregistered name is refused."""
    from vlprompt.protocol import (Layout, Protocol, Step, TreeError, get_protocol, register_protocol,
                                   unregister_protocol)
    from vlprompt.protocol.card import MethodCard
    from vlprompt.sweep.protocols import SweepError, expand, repo_root

    tail = ("{dataset}", "{trainer}", "{config}", "shots_{shots}")
    proto = Protocol(name="wrapped", title="Wrapped", datasets=("dtd",), shots=4,
                     steps=(Step("fit"), Step("adapted", model_from="fit", shots_opt=False, opts=("TEST.X", "1"))),
                     layouts=(Layout("wrapped_fit", "wrapped", "fit", ("wrapped",) + tail + ("fit", "seed{seed}")),
                              Layout("wrapped_adapted", "wrapped", "adapted",
                                     ("wrapped",) + tail + ("adapted", "seed{seed}"))))
    register_protocol(proto)
    try:
        assert run_dir("wrapped", "adapted", dataset="dtd", trainer="T", config="c", shots=4, seed=2) == \
            "wrapped/dtd/T/c/shots_4/adapted/seed2"
        assert parse_run_dir("/o/wrapped/dtd/T/c/shots_4/bb-RN50/adapted/seed2") is None  # bb level after <cfg>
        assert parse_run_dir("/o/wrapped/dtd/T/c/bb-RN50/shots_4/adapted/seed2")["backbone"] == "RN50"
        specs = {"X": MethodCard(name="X", config="vit_b16", config_folder="CoOp")}
        fit, adapted = expand("X", "wrapped", None, [1], output_root=str(tmp_path), root=repo_root(), specs=specs)
        assert (fit.phase, fit.opts) == ("train", ["DATASET.NUM_SHOTS", "4"])
        assert (adapted.phase, adapted.opts, adapted.model_dir) == ("test", ["TEST.X", "1"], fit.output_dir)
        assert adapted.note["protocol"] == "wrapped" and adapted.note["role"] == "adapted"
        with pytest.raises(KeyError, match="already registered"):
            register_protocol(proto)
    finally:
        unregister_protocol("wrapped")
    with pytest.raises(TreeError, match="Unknown protocol 'wrapped'"):
        get_protocol("wrapped")
    with pytest.raises(SweepError, match="Unknown protocol 'wrapped'. Valid protocols: base2new, cross_dataset"):
        expand("X", "wrapped", None, [1], output_root=str(tmp_path), root=repo_root(), specs=specs)
