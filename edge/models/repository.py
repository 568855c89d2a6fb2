"""Model repositories on disk: numbered versions, their digests and facts, installing a version, and the served view
that decides which versions Triton holds.

    <repository>/<model>/config.pbtxt       model-level: the newest version's (what a plain Triton serves)
    <repository>/<model>/<N>/config.pbtxt   version N's own config and facts
    <repository>/<model>/<N>/...            what Triton loads for version N (its digest covers these files)

    <view>/<model>/config.pbtxt             every version's facts, all version folders served
    <view>/<model>/<N> -> <repository>/<model>/<N>    one link per version Triton is to hold

A version number names a pair: both models carry the same N. Versions are never overwritten: an install assembles
``<N>.partial`` folders and renames them into place; a config is replaced by an atomic rename. A station whose
versions change on command has Triton serve the view (explicit model control): a change of versions is a change of
links, and Triton then loads the new version and drops the old without reloading the ones that stay; the view's config
changes only when a version is installed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from edge.errors import ModelRepositoryError
from edge.models.pbtxt import (
    compose,
    config_parameters,
    config_text,
    own_config,
    shared_outputs,
    without_parameters,
)

CONFIG = "config.pbtxt"
DIGEST = "digest"  # sha256 of the files Triton loads for the version
VERSION = "version"


def versions(repository: Path, name: str) -> list[int]:
    """The version numbers of ``name`` in ``repository``, ascending (staged ``.partial`` folders are not versions)."""
    folder = repository / name
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def pairs(repository: Path, names: Sequence[str]) -> list[int]:
    """The versions every model in ``names`` has."""
    common = set(versions(repository, names[0]))
    for name in names[1:]:
        common &= set(versions(repository, name))
    return sorted(common)


def next_version(repository: Path, names: Sequence[str]) -> int:
    return max((v for name in names for v in versions(repository, name)), default=0) + 1


def digest(version_dir: Path) -> str:
    """sha256 over the files Triton loads for a version (every plain file in its folder but its config), by name."""
    sha = hashlib.sha256()
    for path in sorted(p for p in version_dir.iterdir() if p.is_file() and p.name != CONFIG):
        sha.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                sha.update(chunk)
        sha.update(b"\0")
    return sha.hexdigest()


def own_config_text(repository: Path, name: str, version: int) -> str:
    """Version ``version``'s own config; for a version built without one, the model-level config less what
    pinning adds."""
    own = repository / name / str(version) / CONFIG
    if own.is_file():
        return own.read_text()
    level = repository / name / CONFIG
    if not level.is_file():
        raise ModelRepositoryError(f"{name} version {version} in {repository} has no {CONFIG}")
    return own_config(level.read_text())


def facts(repository: Path, name: str, version: int) -> dict[str, str]:
    """What version ``version`` of ``name`` declares, with its digest (computed when its config lacks it)."""
    declared = config_parameters(own_config_text(repository, name, version))
    declared.setdefault(DIGEST, digest(repository / name / str(version)))
    declared[VERSION] = str(version)
    return declared


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def publish(repository: Path, names: Sequence[str]) -> None:
    """Write each model-level config of ``repository`` for its newest version (what a fresh build leaves)."""
    for name in names:
        newest = versions(repository, name)[-1:]
        if not newest:
            raise ModelRepositoryError(f"{repository / name} holds no version")
        known = {newest[0]: facts(repository, name, newest[0])}
        write_atomic(repository / name / CONFIG, compose(own_config_text(repository, name, newest[0]), known, False))


def served(view: Path, name: str) -> list[int]:
    """The versions the view links for ``name``, ascending."""
    folder = view / name
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_symlink() and p.name.isdigit())


def sync_view(repository: Path, view: Path, names: Sequence[str], serve: Sequence[int]) -> bool:
    """Make ``view`` serve exactly the versions ``serve`` of ``repository``: its config (every installed version's
    facts) rewritten only when it differs, a link per version added, the others taken away. Whether the config
    changed (Triton then reloads every version it holds once)."""
    changed = False
    for name in names:
        installed = versions(repository, name)
        missing = sorted(set(serve) - set(installed))
        if missing:
            raise ModelRepositoryError(f"{repository / name} has no version {', '.join(map(str, missing))}")
        folder = view / name
        folder.mkdir(parents=True, exist_ok=True)
        known = {v: facts(repository, name, v) for v in installed}
        own = shared_outputs(own_config_text(repository, name, installed[-1]),
                             [own_config_text(repository, name, v) for v in installed])  # fmt: skip
        text = compose(own, known, True)
        config = folder / CONFIG
        if not config.is_file() or config.read_text() != text:
            write_atomic(config, text)
            changed = True
        for version in set(serve) - set(served(view, name)):
            (folder / str(version)).symlink_to((repository / name / str(version)).resolve(), target_is_directory=True)
        for version in set(served(view, name)) - set(serve):
            (folder / str(version)).unlink()
    return changed


def stamped(config: str, parameters: Mapping[str, str]) -> str:
    """``config`` with ``parameters`` set (replacing entries of the same keys)."""
    return config_text(without_parameters(config, tuple(parameters)), parameters)


def seal(partial: Path, version: int, extra: Mapping[str, str] | None = None) -> None:
    """Stamp a staged version's own config with its number and digest, then rename it into place."""
    config = partial / CONFIG
    text = config.read_text() if config.is_file() else ""
    write_atomic(config, stamped(text, {VERSION: str(version), DIGEST: digest(partial), **(extra or {})}))
    final = partial.with_name(str(version))
    if final.exists():
        raise ModelRepositoryError(f"{final} exists: a version is never overwritten")
    partial.rename(final)


def _model_files(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_file() and p.name != CONFIG for p in folder.iterdir())


def locate(source: Path, version: int | None, names: Sequence[str]) -> tuple[dict[str, Path], dict[str, str], str]:
    """The version folder of each model in ``source``, each one's own config text, and what to call the source.

    ``source`` is a model repository (``<model>/<N>/`` for each model: version ``version``, default the newest both
    have), one version folder of such a repository (``<repository>/<model>/<N>``: version N of every model), or a
    folder holding one version of each model (``<model>/`` with its config and model files)."""
    if not source.is_dir():
        raise ModelRepositoryError(f"{source} is not a folder")
    if source.name.isdigit() and source.parent.name in names:  # <repository>/<model>/<N>
        source, version = source.parent.parent, int(source.name)
    if all(_model_files(source / name) for name in names):  # <folder>/<model>/ holding one version
        missing = [name for name in names if not (source / name / CONFIG).is_file()]
        if missing:
            raise ModelRepositoryError(f"{source / missing[0]} holds model files but no {CONFIG}")
        folders = {name: source / name for name in names}
        return folders, {name: (source / name / CONFIG).read_text() for name in names}, str(source.resolve())
    available = pairs(source, names)
    if not available:
        raise ModelRepositoryError(
            f"{source} holds no version of {' and '.join(names)} (want <model>/<N>/ for each, or <model>/ with "
            "its config and model files)"
        )
    chosen = version if version is not None else available[-1]
    if chosen not in available:
        raise ModelRepositoryError(f"{source} has no version {chosen} of every model (it has {available})")
    folders = {name: source / name / str(chosen) for name in names}
    for folder in folders.values():
        if not _model_files(folder):
            raise ModelRepositoryError(f"{folder} holds no model file")
    configs = {name: own_config_text(source, name, chosen) for name in names}
    return folders, configs, f"{source.resolve()}#{chosen}"


def install(source: Path, version: int | None, repository: Path, names: Sequence[str]) -> tuple[int, bool]:
    """A version of both models from ``source`` (``locate``) installed into ``repository`` under the next free
    number; (its number there, whether it was copied). A version of the repository itself, or one already there with
    the same digests, is not copied again."""
    folders, configs, origin = locate(source, version, names)
    first = next(iter(folders.values()))
    if first.parent.parent.resolve() == repository.resolve() and first.name.isdigit():
        return int(first.name), False
    wanted = {name: digest(folder) for name, folder in folders.items()}
    for existing in reversed(pairs(repository, names)):
        if all(facts(repository, name, existing)[DIGEST] == wanted[name] for name in names):
            return existing, False
    target = next_version(repository, names)
    staged = []
    for name in names:
        partial = repository / name / f"{target}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(folders[name], partial, symlinks=False)
        write_atomic(partial / CONFIG, configs[name])
        staged.append(partial)
    for partial in staged:
        seal(partial, target, {"installed_from": origin})
    return target, True
