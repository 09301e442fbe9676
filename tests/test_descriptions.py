"""Class descriptions as data (vlprompt/data/descriptions.py): download (pinned, git-blob verified, atomic),
the doctor's checks, loading and class lookup, the missing-file error, and the zero-shot head from descriptions
(``MODEL.ZERO_SHOT_TEXT``, CuPL's ensembling) with ZeroshotCLIP. Files are fabricated in the official formats
(CoPrompt's ``gpt_file/<name>_prompt.json``, CuPL's ``<name>_prompts_full.json``: ``{class: [sentences]}``)."""
import json
import os
import os.path as osp
import shutil

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import make_cfg, make_image_folder, write_user_descriptions
from vlprompt.data import descriptions as D
from vlprompt.data import doctor, download
from vlprompt.errors import UserError, error_line

EUROSAT = {"Annual Crop Land": ["A centered satellite photo of Annual Crop Land shows green fields.",
                                "Annual Crop Land looks like patches of fields."],
           "Forest": ["A forest is a dense area of trees.", "A forest looks dark green from above."]}
PETS = {"abyssinian": ["An abyssinian is a slender cat with a ticked coat."],
        "Sphynx": ["A Sphynx is a hairless cat.", "A Sphynx has large ears."]}


def _bytes(table):
    return json.dumps(table, indent=4).encode()


@pytest.fixture
def fabricated(monkeypatch):
    """Two sources pinned to fabricated files (their git blob SHA-1 and size), and a fetcher serving them."""
    files = {"gpt_file/eurosat_prompt.json": _bytes(EUROSAT), "all_prompts/full_prompts/pets_prompts_full.json": _bytes(PETS)}
    pin = {p: D.DescriptionFile(p, D.git_blob_sha1(b), len(b)) for p, b in files.items()}
    sources = {
        "coprompt": D.DescriptionSource("coprompt", "ShuvenduRoy/CoPrompt", "a" * 40, "CoPrompt", equal_counts=True,
                                        files={"EuroSAT": pin["gpt_file/eurosat_prompt.json"]}),
        "cupl": D.DescriptionSource("cupl", "sarahpratt/CuPL", "b" * 40, "CuPL",
                                    files={"OxfordPets": pin["all_prompts/full_prompts/pets_prompts_full.json"]}),
    }
    monkeypatch.setattr(D, "SOURCES", sources)
    served = dict(files)
    calls = []

    def fetcher(url, dest, md5=None, timeout=None):
        calls.append(url)
        path = url.split("/", 6)[-1]  # https://raw.githubusercontent.com/<owner>/<repo>/<commit>/<path>
        if path not in served:
            raise download.DownloadError(f"cannot reach raw.githubusercontent.com for {url}")
        with open(dest, "wb") as f:
            f.write(served[path])
        return dest

    return sources, served, fetcher, calls


def test_git_blob_sha1_is_gits():
    assert D.git_blob_sha1(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"  # git hash-object


def test_pinned_sources_name_the_official_files():
    co, cu = D.SOURCES["coprompt"], D.SOURCES["cupl"]
    assert co.commit == "a2a6c12e3622cfe4b3a127f4ba0c4f3eb841418c" and cu.commit.startswith("719619c8")
    assert co.url(co.files["EuroSAT"]) == ("https://raw.githubusercontent.com/ShuvenduRoy/CoPrompt/"
                                           "a2a6c12e3622cfe4b3a127f4ba0c4f3eb841418c/gpt_file/eurosat_prompt.json")
    assert co.files["Caltech101"].path == "gpt_file/caltech_prompt.json"
    assert cu.files["DescribableTextures"].path == "all_prompts/full_prompts/texture_prompts_full.json"
    assert len(co.files) == 15 and "EuroSAT" not in cu.files


def test_download_verifies_installs_and_records(fabricated, tmp_path, capsys):
    _, _, fetcher, calls = fabricated
    assert download.main(["descriptions", "--root", str(tmp_path)], fetcher=fetcher) == 0
    co = tmp_path / "descriptions" / "coprompt" / "eurosat_prompt.json"
    cu = tmp_path / "descriptions" / "cupl" / "pets_prompts_full.json"
    assert json.loads(co.read_text()) == EUROSAT and json.loads(cu.read_text()) == PETS
    manifest = json.loads((tmp_path / "descriptions" / "coprompt" / ".vlprompt_manifest.json").read_text())
    assert manifest["source"]["commit"] == "a" * 40 and list(manifest["files"]) == ["eurosat_prompt.json"]
    assert len(calls) == 2 and calls[0].startswith("https://raw.githubusercontent.com/ShuvenduRoy/CoPrompt/aaaa")
    # present and verified: nothing fetched again; one source by name
    assert download.main(["descriptions:cupl", "--root", str(tmp_path)], fetcher=fetcher) == 0
    assert len(calls) == 2


def test_a_file_that_is_not_the_pinned_one_is_refused_and_nothing_is_left(fabricated, tmp_path, capsys):
    _, served, fetcher, _ = fabricated
    served["gpt_file/eurosat_prompt.json"] = _bytes({**EUROSAT, "Forest": ["changed"]})
    assert download.main(["descriptions:coprompt", "--root", str(tmp_path)], fetcher=fetcher) == 1
    err = capsys.readouterr().err
    assert "eurosat_prompt.json" in err and ("git blob SHA-1" in err or "bytes, expected" in err)
    assert os.listdir(tmp_path / "descriptions" / "coprompt") == []


def test_doctor_checks_classes_counts_and_the_pin(fabricated, tmp_path, capsys):
    _, _, fetcher, _ = fabricated
    assert doctor.main(["--root", str(tmp_path), "--dataset", "descriptions"]) == 1  # nothing installed
    assert "python -m vlprompt.data.download descriptions:coprompt" in capsys.readouterr().out
    D.download_descriptions(str(tmp_path), fetcher=fetcher, quiet=True)
    # EuroSAT installed with a split file naming its classes: every class is looked for
    ddir = tmp_path / "eurosat"
    ddir.mkdir()
    split = {"train": [["a.jpg", 0, "Annual Crop Land"], ["b.jpg", 1, "Forest"]], "val": [], "test": []}
    (ddir / "split_zhou_EuroSAT.json").write_text(json.dumps(split))
    rows = {f: (s, m) for s, f, m in D.check_descriptions(str(tmp_path))}
    assert rows["coprompt/eurosat_prompt.json"][0] == "problem"  # the catalog's EuroSAT has 10 classes
    assert "2 classes, 2 sentences per class" in rows["coprompt/eurosat_prompt.json"][1]
    assert "every class of the installed EuroSAT present" in rows["coprompt/eurosat_prompt.json"][1]
    assert "1-2 sentences per class" in rows["cupl/pets_prompts_full.json"][1]  # CuPL: counts may differ
    split["train"].append(["c.jpg", 2, "Highway or Road"])
    (ddir / "split_zhou_EuroSAT.json").write_text(json.dumps(split))
    rows = {f: (s, m) for s, f, m in D.check_descriptions(str(tmp_path))}
    assert '"Highway or Road"' in rows["coprompt/eurosat_prompt.json"][1]
    # unequal counts in a source whose consumer stacks them (CoPrompt)
    path = tmp_path / "descriptions" / "coprompt" / "eurosat_prompt.json"
    path.write_text(json.dumps({"Annual Crop Land": ["x"], "Forest": ["y", "z"]}))
    rows = {f: (s, m) for s, f, m in D.check_descriptions(str(tmp_path))}
    assert "different numbers of sentences" in rows["coprompt/eurosat_prompt.json"][1]
    assert "git blob SHA-1 differs" in rows["coprompt/eurosat_prompt.json"][1]
    assert doctor.main(["--root", str(tmp_path), "--dataset", "descriptions"]) == 1


def test_missing_file_is_one_error_line_naming_the_file_and_the_command(tmp_path):
    with pytest.raises(UserError) as e:
        D.load_descriptions(str(tmp_path), "coprompt", "DescribableTextures")
    line = error_line(e.value)
    assert line.startswith("Error: ") and "\n" not in line
    assert osp.join(str(tmp_path), "descriptions", "coprompt", "dtd_prompt.json") in line
    assert f"python -m vlprompt.data.download descriptions:coprompt --root {tmp_path}" in line
    with pytest.raises(UserError, match="have no file for dataset EuroSAT"):
        D.description_file("cupl", "EuroSAT")


def test_class_lookup_is_coprompts_rule_then_case_insensitive():
    assert D.class_descriptions(PETS, ["sphynx", "abyssinian"]) == [PETS["Sphynx"], PETS["abyssinian"]]
    assert D.class_descriptions(EUROSAT, ["Annual_Crop_Land"]) == [EUROSAT["Annual Crop Land"]]
    with pytest.raises(UserError, match='no descriptions for 1 class.*"beagle"'):
        D.class_descriptions(PETS, ["sphynx", "beagle"], where="pets.json")


def test_malformed_file_names_the_file(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"cat": "not a list"}))
    with pytest.raises(UserError, match="x.json: class \"cat\""):
        D.read_description_file(str(p))


# ---------------------------------------------------------------------------------------- the zero-shot head
@pytest.fixture(scope="module")
def zs(tmp_path_factory):
    from vlprompt.engine import build_trainer
    from vlprompt.engine.methods import load_plugins
    from vlprompt.utils import restore_stdout

    load_plugins()
    root = tmp_path_factory.mktemp("zs")
    names = make_image_folder(str(root / "three"), n_classes=3, n_per_class=4)
    write_user_descriptions(str(root), "three", names, per_class=2)
    out = {}
    for mode in ("descriptions", "both"):
        cfg = make_cfg(root, trainer="ZeroshotCLIP", folder="three", output_dir=str(root / mode),
                       opts=["MODEL.ZERO_SHOT_TEXT", mode])
        cfg.freeze()
        try:
            out[mode] = build_trainer(cfg)
        finally:
            restore_stdout()
    return root, names, out


def _encode(clip, texts):
    from vlprompt.clip.tokenizer import tokenize

    with torch.no_grad():
        return F.normalize(clip.encode_text(tokenize(texts, model=clip)).float(), dim=-1)


def test_zero_shot_head_from_descriptions_is_cupl_ensembling(zs):
    root, names, t = zs
    table = json.load(open(osp.join(root, "descriptions", "user", "three.json")))
    head = t["descriptions"].head
    clip = head._clip_model
    want = F.normalize(torch.stack([_encode(clip, table[c.replace("_", " ")]).mean(0) for c in names]), dim=-1)
    assert head.text_mode == "descriptions"
    torch.testing.assert_close(head.text_features(), want, rtol=1e-5, atol=1e-6)
    from vlprompt.clip import ZeroShotHead, encode_class_texts, get_template

    template = get_template("ImageFolder")
    assert head.templates == [template]
    templates = ZeroShotHead(clip, names, template)  # built outside the engine's block: the default
    both = F.normalize(torch.stack([
        _encode(clip, [template.format(c.replace("_", " "))] + table[c.replace("_", " ")]).mean(0) for c in names]), dim=-1)
    torch.testing.assert_close(t["both"].head.text_features(), both, rtol=1e-5, atol=1e-6)
    # the default is the templates, unchanged
    assert templates.text_mode == "templates"
    assert torch.equal(templates.text_features(), encode_class_texts(clip, names, [template]))
    assert not torch.allclose(templates.text_features(), want)


def test_zero_shot_descriptions_missing_file_is_a_user_error(zs, tmp_path):
    from vlprompt.engine import build_trainer
    from vlprompt.utils import restore_stdout

    root, _, _ = zs
    shutil.copytree(root / "three", tmp_path / "three")
    cfg = make_cfg(tmp_path, trainer="ZeroshotCLIP", folder="three", output_dir=str(tmp_path / "o"),
                   opts=["MODEL.ZERO_SHOT_TEXT", "descriptions"])
    cfg.freeze()
    with pytest.raises(UserError, match=r"descriptions/user/three.json not found"):
        try:
            build_trainer(cfg)
        finally:
            restore_stdout()


def test_every_zero_shot_head_built_in_the_block_follows_it(zs):
    from vlprompt.clip import ZeroShotHead, zero_shot_text

    clip = zs[2]["descriptions"].head._clip_model
    with zero_shot_text("descriptions", lambda names: [[f"{n} one", f"{n} two"] for n in names]):
        head = ZeroShotHead(clip, ["cat", "dog"], "a photo of a {}.")
    assert head.text_mode == "descriptions" and head.class_sentences == [["cat one", "cat two"], ["dog one", "dog two"]]
    assert ZeroShotHead(clip, ["cat"], "a photo of a {}.").text_mode == "templates"  # outside the block
