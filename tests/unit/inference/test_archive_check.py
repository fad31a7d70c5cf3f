"""No pickle from a model file ever runs: a pickle planted in each format is refused by the
archive check (naming where it is), and even when the check is skipped the loaders never
run it (the marker file it would create stays absent)."""

from __future__ import annotations

import io
import pickle
import pickletools
import zipfile
from pathlib import Path

import pytest

from p2pagent.errors import InvalidArgument
from p2pagent.inference.archive_check import check_archive, pickle_globals
from p2pagent.inference.formats import ModelFormat
from p2pagent.inference.spec import ModelSpec
from tests import planted


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, planted.Planted], Path]:
    root = tmp_path_factory.mktemp("planted")
    marker = root / "MARKER"
    return planted.planted_models(root / "files", marker), marker


def test_clean_archives_pass(
    files: tuple[dict[str, planted.Planted], Path], demo_files: dict[str, Path]
) -> None:
    root = next(iter(files[0].values())).path.parent
    check_archive(root / "clean.pt", ModelFormat.TORCHSCRIPT)
    check_archive(root / "clean.pt2", ModelFormat.TORCH_EXPORT)
    check_archive(demo_files["torchscript"], ModelFormat.TORCHSCRIPT)
    check_archive(demo_files["torch_export"], ModelFormat.TORCH_EXPORT)


def test_a_pickle_planted_in_each_archive_format_is_refused_naming_it(
    files: tuple[dict[str, planted.Planted], Path],
) -> None:
    planted_files, marker = files
    refused = {k: p for k, p in planted_files.items() if p.refused}
    assert len(refused) == 6
    for label, p in refused.items():
        with pytest.raises(InvalidArgument, match="pickle") as e:
            check_archive(p.path, ModelFormat.parse(p.format))
        assert "refused" in str(e.value), label
    assert not marker.exists()


def test_even_unchecked_the_loaders_never_run_a_planted_pickle(
    files: tuple[dict[str, planted.Planted], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the archive check switched off, torch.jit.load's restricted unpickler and the
    process-wide weights_only refuse every payload; the safetensors one is never parsed as a
    pickle at all (the model loads and runs)."""
    from p2pagent.inference import loading

    monkeypatch.setattr(loading, "check_archive", lambda path, fmt: None)
    planted_files, marker = files
    for label, p in planted_files.items():
        spec = ModelSpec.from_dict(p.metadata)
        if p.refused:
            with pytest.raises(InvalidArgument):
                loading.load_model(label, p.path, spec, "cpu", ModelFormat.parse(p.format))
        else:
            loading.load_model(label, p.path, spec, "cpu", ModelFormat.parse(p.format))
        assert not marker.exists(), label


def test_torch_load_is_weights_only_in_a_process_that_loads_models(tmp_path: Path) -> None:
    import torch

    from p2pagent.inference import loading  # noqa: F401 - importing it sets the switch

    marker = tmp_path / "MARKER"
    with pytest.raises(pickle.UnpicklingError):
        torch.load(io.BytesIO(planted.torch_saved_payload(marker)), weights_only=False)
    assert not marker.exists()


def test_pickle_globals_reads_opcodes_without_running_them(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    assert pickle_globals(planted.payload(marker), "p") == ["posix system"]
    proto4 = pickle.dumps(planted._Payload(marker), protocol=4)  # STACK_GLOBAL, memoized
    assert pickle_globals(proto4, "p") == ["posix system"]
    assert not marker.exists()


def test_a_stack_global_from_the_memo_is_refused() -> None:
    # "os" and "system" pushed, memoized, then fetched back: a reader of literals is blind.
    ops = (
        b"\x80\x04"
        b"\x8c\x02os\x940"  # SHORT_BINUNICODE 'os', MEMOIZE (0), POP
        b"\x8c\x06system\x940"  # SHORT_BINUNICODE 'system', MEMOIZE (1), POP
        b"h\x00h\x01"  # BINGET 0, BINGET 1
        b"\x93"  # STACK_GLOBAL
        b"."
    )
    pickletools.dis(ops, out=io.StringIO())  # a well-formed stream
    with pytest.raises(InvalidArgument, match="cannot read"):
        pickle_globals(ops, "p")


def test_junk_and_foreign_entries_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"PK\x03\x04" + bytes(8188))
    with pytest.raises(InvalidArgument, match="damaged zip"):
        check_archive(junk, ModelFormat.TORCHSCRIPT)
    clean = planted.exported(tmp_path / "m.pt2")
    extra = tmp_path / "extra.pt2"
    with zipfile.ZipFile(clean) as zin, zipfile.ZipFile(extra, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, zin.read(name))
        root = zin.namelist()[0].split("/", 1)[0]
        zout.writestr(f"{root}/data/aotinductor/model.so", b"\x7fELF")
    with pytest.raises(InvalidArgument, match="aotinductor"):
        check_archive(extra, ModelFormat.TORCH_EXPORT)


def test_an_export_archive_with_extra_files_passes(tmp_path: Path) -> None:
    import torch

    program = torch.export.export(planted._Linear(), (torch.zeros(2, planted.IN),))
    path = tmp_path / "extra.pt2"
    torch.export.save(program, str(path), extra_files={"notes.txt": "trained on monday"})
    check_archive(path, ModelFormat.TORCH_EXPORT)
