"""`jobs.adapters.odoo.addons_digest`: the digest of Odoo modules' code, on real directories (no
Odoo needed).

Fake modules are directories with a `__manifest__.py`, laid out as Odoo's addons path would
hold them; the Odoo binary's interpreter is this test's own Python.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from jobs.adapters.odoo import addons_digest
from jobs.adapters.odoo.addons_digest import MISSING, digest, search_path


def module(
    addons: Path,
    name: str,
    manifest: str | dict[str, object] = "",
    files: dict[str, str] | None = None,
) -> Path:
    """A module directory `addons/name` with its manifest and `files` (rel path → text)."""
    where = addons / name
    where.mkdir(parents=True, exist_ok=True)
    text = manifest if isinstance(manifest, str) else repr(manifest)
    (where / "__manifest__.py").write_text(text or repr({"name": name, "depends": ["base"]}))
    (where / "__init__.py").write_text("")
    for rel, content in (files or {}).items():
        target = where / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    return where


@pytest.fixture
def addons(tmp_path: Path) -> Path:
    """fp_a depends on fp_b, which depends on fp_c; fp_other is unrelated."""
    root = tmp_path / "addons"
    module(root, "base", {"name": "Base", "depends": []}, {"models/res.py": "base = 1\n"})
    module(root, "fp_a", {"depends": ["fp_b"]}, {"models/a.py": "a = 1\n"})
    module(root, "fp_b", {"depends": ["fp_c"]}, {"views/b.xml": "<odoo/>\n"})
    module(root, "fp_c", {"depends": ["base"]}, {"static/src/c.js": "c();\n", "i18n/fr.po": "x\n"})
    module(root, "fp_other", {"depends": ["base"]}, {"other.py": "o = 1\n"})
    return root


def test_dependency_closure_is_covered_and_nothing_else(addons: Path) -> None:
    first = digest(["fp_a"], [str(addons)])
    assert set(first.modules) == {"base", "fp_a", "fp_b", "fp_c"}
    assert first.missing == []

    (addons / "fp_other" / "other.py").write_text("o = 2\n")  # not in the closure
    assert digest(["fp_a"], [str(addons)]).value == first.value

    (addons / "fp_c" / "static" / "src" / "c.js").write_text("c(2);\n")  # two levels down
    changed = digest(["fp_a"], [str(addons)])
    assert changed.value != first.value
    assert changed.modules["fp_c"] != first.modules["fp_c"]
    assert changed.modules["fp_a"] == first.modules["fp_a"]

    (addons / "fp_b" / "views" / "new.xml").write_text("<odoo/>\n")  # a new file counts
    assert digest(["fp_a"], [str(addons)]).value != changed.value


def test_deterministic_whatever_the_location_mtimes_or_order(addons: Path, tmp_path: Path) -> None:
    first = digest(["fp_b", "fp_a"], [str(addons)])
    assert digest(["fp_a", "fp_b"], [str(addons)]) == first
    copy = tmp_path / "elsewhere" / "addons"
    shutil.copytree(addons, copy)  # new mtimes and inodes, same content
    for path in copy.rglob("*"):
        os.utime(path, (0, 0))
    again = digest(["fp_a"], [str(copy)])
    assert again.value == first.value and again.modules == first.modules

    (copy / "fp_a" / "models" / "a.py").rename(copy / "fp_a" / "models" / "renamed.py")
    assert digest(["fp_a"], [str(copy)]).value != first.value  # the path is part of it


def test_by_products_and_dot_names_do_not_count(addons: Path) -> None:
    first = digest(["fp_c"], [str(addons)])
    cache = addons / "fp_c" / "__pycache__"
    cache.mkdir()
    (cache / "__init__.cpython-311.pyc").write_bytes(b"\x00compiled")
    (addons / "fp_c" / "stale.pyc").write_bytes(b"\x00")
    (addons / "fp_c" / "old.pyo").write_bytes(b"\x00")
    (addons / "fp_c" / ".git").mkdir()
    (addons / "fp_c" / ".git" / "HEAD").write_text("ref\n")
    (addons / "fp_c" / ".swp").write_text("editor\n")
    assert digest(["fp_c"], [str(addons)]).value == first.value
    (addons / "fp_c" / "i18n" / "fr.po").write_text("y\n")  # translations do count
    assert digest(["fp_c"], [str(addons)]).value != first.value


def test_missing_module_is_recorded_and_its_arrival_changes_the_digest(
    addons: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    first = digest(["web", "mail"], [str(empty), str(tmp_path / "absent")])
    assert first.modules == {"base": MISSING, "mail": MISSING, "web": MISSING}
    assert first.server == MISSING
    assert first.missing == ["base", "mail", "web"]
    assert digest(["mail", "web"], [str(empty)]).value == first.value  # stable

    module(empty, "web", {"depends": ["base"]})
    arrived = digest(["web", "mail"], [str(empty)])
    assert arrived.value != first.value and arrived.missing == ["base", "mail"]


def test_first_directory_of_the_path_wins(addons: Path, tmp_path: Path) -> None:
    shadow = tmp_path / "shadow"
    module(shadow, "fp_c", {"depends": ["base"]}, {"shadowed.py": "s = 1\n"})
    own = digest(["fp_c"], [str(addons)])
    shadowed = digest(["fp_c"], [str(shadow), str(addons)])
    assert shadowed.modules["fp_c"] != own.modules["fp_c"]
    assert digest(["fp_c"], [str(addons), str(shadow)]).modules == own.modules
    assert shadowed.path == (str(shadow), str(addons))


def test_auto_install_modules_pulled_in_follow_odoo_rules(addons: Path) -> None:
    # True: triggered when all its depends are installed.
    module(addons, "fp_glue", {"depends": ["fp_a", "fp_c"], "auto_install": True})
    # A list: triggered by those modules only; its other depends come with it.
    module(addons, "fp_bridge", {"depends": ["fp_b", "fp_extra"], "auto_install": ["fp_b"]})
    module(addons, "fp_extra", {"depends": ["base"]})
    # []: always; not installable: never; a trigger outside the closure: not.
    module(addons, "fp_always", {"depends": ["base"], "auto_install": []})
    module(addons, "fp_off", {"depends": ["base"], "auto_install": True, "installable": False})
    module(addons, "fp_no", {"depends": ["fp_other"], "auto_install": True})
    # auto-installed by an auto-installed module (a second round)
    module(addons, "fp_chain", {"depends": ["fp_glue"], "auto_install": True})

    covered = set(digest(["fp_a"], [str(addons)]).modules)
    assert covered == {"base", "fp_a", "fp_b", "fp_c", "fp_glue", "fp_bridge", "fp_extra",
                       "fp_always", "fp_chain"}  # fmt: skip
    assert set(digest(["fp_c"], [str(addons)]).modules) == {"base", "fp_c", "fp_always"}


def test_manifest_is_never_executed(addons: Path, tmp_path: Path) -> None:
    proof = tmp_path / "executed"
    evil = f"__import__('pathlib').Path({str(proof)!r}).write_text('x') or {{'depends': []}}"
    module(addons, "fp_evil", evil, {"code.py": "e = 1\n"})
    module(addons, "fp_user", {"depends": ["fp_evil", "../fp_a", "/etc", 7]})
    found = digest(["fp_user"], [str(addons)])
    assert not proof.exists()
    # The unreadable manifest gives no dependencies; the module's files are still hashed, and
    # names that are not module names never reach a path.
    assert set(found.modules) == {"base", "fp_user", "fp_evil"}
    assert found.modules["fp_evil"] != MISSING


def test_symlinks_are_followed_but_a_loop_ends(addons: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "lib.js").write_text("lib(1);\n")
    where = addons / "fp_c"
    (where / "linked").symlink_to(outside)
    (where / "loop").symlink_to(where)  # the module inside itself
    (where / "static" / "up").symlink_to(where / "static")
    (where / "dangling.py").symlink_to(tmp_path / "nowhere")
    os.mkfifo(where / "pipe")  # opening it for reading would block without O_NONBLOCK

    first = digest(["fp_c"], [str(addons)])
    (outside / "lib.js").write_text("lib(2);\n")  # content reached through the link counts
    assert digest(["fp_c"], [str(addons)]).value != first.value


def test_the_server_code_around_base_counts_but_not_its_other_addons(tmp_path: Path) -> None:
    package = tmp_path / "odoo"
    module(package / "addons", "base", {"depends": []}, {"models/ir.py": "ir = 1\n"})
    module(package / "addons", "test_unused", {"depends": ["base"]})
    (package / "__init__.py").write_text("")
    (package / "release.py").write_text("version_info = (18, 0)\n")
    (package / "models.py").write_text("orm = 1\n")
    first = digest(["base"], [str(package / "addons")])
    assert first.server not in (MISSING, first.modules["base"])
    assert set(first.modules) == {"base"}

    (package / "addons" / "test_unused" / "x.py").write_text("x = 1\n")  # not installed
    assert digest(["base"], [str(package / "addons")]).value == first.value
    (package / "models.py").write_text("orm = 2\n")  # the ORM of a new image
    changed = digest(["base"], [str(package / "addons")])
    assert changed.value != first.value and changed.modules == first.modules

    (package / "release.py").unlink()  # base not inside an odoo package: no server code
    assert digest(["base"], [str(package / "addons")]).server == MISSING


def test_a_symlinked_module_directory_is_found(addons: Path, tmp_path: Path) -> None:
    linked = tmp_path / "linked-addons"
    linked.mkdir()
    (linked / "fp_a").symlink_to(addons / "fp_a")
    found = digest(["fp_a"], [str(linked), str(addons)])
    assert found.modules == digest(["fp_a"], [str(addons)]).modules


# ----------------------------------------------------------------------------- search_path


def script(path: Path, shebang: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{shebang}\nimport odoo\n")
    path.chmod(0o755)
    return path


def odoo_package(site: Path) -> Path:
    """A fake `odoo` package with its own addons (base) under `site`."""
    (site / "odoo" / "addons" / "base").mkdir(parents=True)
    (site / "odoo" / "__init__.py").write_text("raise SystemExit('odoo must not be imported')\n")
    (site / "odoo" / "release.py").write_text("raise SystemExit('nor any part of it')\n")
    (site / "odoo" / "addons" / "__init__.py").write_text("")
    (site / "odoo" / "addons" / "base" / "__manifest__.py").write_text("{'depends': []}")
    return (site / "odoo" / "addons").resolve()


def test_source_checkout_finds_the_odoo_beside_odoo_bin(tmp_path: Path) -> None:
    checkout = tmp_path / "src"
    base_dir = odoo_package(checkout)
    (checkout / "addons" / "web").mkdir(parents=True)
    odoo_bin = script(checkout / "odoo-bin", sys.executable)
    link = tmp_path / "bin" / "odoo"
    link.parent.mkdir()
    link.symlink_to(odoo_bin)  # sys.path[0] is the real script's directory, as in Python
    # No addons_path anywhere: Odoo's default, base's dir and the checkout's addons/.
    assert search_path(str(link), odoo_config=None) == [
        str(base_dir),
        str((checkout / "addons").resolve()),
    ]


def test_installed_odoo_is_found_through_the_interpreter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site, extra = tmp_path / "site", tmp_path / "extra"
    base_dir = odoo_package(site)
    (extra / "odoo" / "addons" / "pip_addon").mkdir(parents=True)  # an odoo-addon-* wheel
    monkeypatch.setenv("PYTHONPATH", f"{extra}{os.pathsep}{site}")
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("ODOO_RC", raising=False)
    interp = Path(sys.executable).name
    odoo_bin = script(tmp_path / "usr" / "bin" / "odoo", f"/usr/bin/env {interp}")
    conf = tmp_path / "odoo.conf"
    conf.write_text("[options]\naddons_path = /mnt/extra-addons, ~/more\n")
    assert search_path(str(odoo_bin), odoo_config=conf) == [
        str(base_dir),
        str((extra / "odoo" / "addons").resolve()),
        "/mnt/extra-addons",
        os.path.realpath(os.path.expanduser("~/more")),
    ]
    # The job's --addons-path beats the config's, as on Odoo's command line.
    assert search_path(str(odoo_bin), odoo_config=conf, addons_path=str(tmp_path)) == [
        str(base_dir),
        str((extra / "odoo" / "addons").resolve()),
        str(tmp_path.resolve()),
    ]


def test_config_from_odoo_rc_and_a_wrapper_that_cannot_be_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrapper = tmp_path / "odoo"
    wrapper.write_text('#!/bin/sh\nexec /somewhere/python /somewhere/odoo-bin "$@"\n')
    wrapper.chmod(0o755)
    conf = tmp_path / "odoo.conf"
    conf.write_text(f"[options]\naddons_path = {tmp_path}/odoo/addons,{tmp_path}/addons\n")
    monkeypatch.setenv("ODOO_RC", str(conf))
    # Not a Python script: Odoo's own addons come only from the configured path.
    assert search_path(str(wrapper)) == [
        str((tmp_path / "odoo" / "addons").resolve()),
        str((tmp_path / "addons").resolve()),
    ]
    assert search_path(str(tmp_path / "no-such-odoo"), addons_path="/x") == ["/x"]


def test_interpreter_without_odoo_gives_no_base_dir(tmp_path: Path) -> None:
    odoo_bin = script(tmp_path / "odoo", sys.executable)  # no odoo package anywhere
    assert search_path(str(odoo_bin), addons_path=str(tmp_path)) == [str(tmp_path.resolve())]


def test_shebang_forms() -> None:
    exe = sys.executable
    assert addons_digest.parse_shebang(f"#!{exe} -I -u\n".encode()) == [exe, "-I"]
    assert addons_digest.parse_shebang(b"#!/bin/sh\n") is None
    assert addons_digest.parse_shebang(b"\x7fELF...") is None
    assert addons_digest.parse_shebang(b"#!/usr/bin/env -S PYTHONX=1 perl\n") is None
