"""Model management commands: `metis models`, `metis download`, `metis doctor`."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import typer

from metis_cli.errors import MetisError

# Front-end resources that `metis download` fetches besides the model cards.
FRONTENDS = ("zh-frontend", "ja-frontend", "face-detector")


def _err(msg: str) -> None:
    typer.echo(f"metis: error: {msg}", err=True)


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _verify_rows(store, card, rows: list[dict]) -> list[str]:
    """Check each present file of `card` against its manifest; fills `verified`/`notes`; the problems."""
    problems: list[str] = []
    for row in rows:
        if not row["path"]:
            row["verified"], row["notes"] = None, ["not present"]
            continue
        try:
            row["notes"] = store.verify(card, row["role"], Path(row["path"]))
            row["verified"] = True
        except MetisError as exc:
            row["verified"], row["notes"] = False, [str(exc)]
            problems.append(str(exc))
    return problems


def _print_card(name: str, card, rows: list[dict], default_for: str | None, verify: bool) -> None:
    """The human-readable listing of one card: description, files present, notes."""
    present = sum(r["path"] is not None for r in rows)
    tag = f" (default for {default_for})" if default_for else ""
    print(f"{name}{tag}: {card.description}")
    print(f"  {present}/{len(rows)} files present, license {card.license or '-'}")
    for r in rows:
        size = _human(r["bytes"]) if r["path"] else r["size_listed"]
        mark = "✗" if not r["path"] or r.get("verified") is False else "✓"
        print(f"  {mark} {r['file']}  {size}")
        if verify and r["path"]:
            for note in r["notes"]:
                print(f"      {'! ' if r['verified'] is False else 'partly checked: '}{note}")
    note = card.extra.get("visual_encoder", {}).get("note")
    if note:
        print(f"  note: {note}")


def models(
    checkpoint_dir: Path = typer.Option(
        None,
        "--checkpoint-dir",
        envvar="METIS_CHECKPOINT_DIR",
        help="Local weights tree <org>/<repo>/<path> (default: HF cache).",
    ),
    verify: bool = typer.Option(
        False, "--verify", help="Check present files' headers against the manifests."
    ),
    json_out: bool = typer.Option(False, "--json", help="One JSON object per model on stdout."),
) -> None:
    """List the model cards, which of their files are present locally, and their sizes."""
    from metis_cli.assets.cards import (
        DEFAULT_MODEL,
        OVERRIDES_FILE,
        ModelStore,
        card_names,
        file_status,
        get_card,
    )

    store = ModelStore(checkpoint_dir, offline=True)
    defaults = {v: k for k, v in DEFAULT_MODEL.items()}
    failed = False
    if verify and not json_out and store.has_overrides:
        print(
            f"config overrides: {store.checkpoint_dir / OVERRIDES_FILE} (not the released sizes): "
            "key names and tensor ranks are checked against the full-size manifests, sizes are not"
        )
    for name in card_names():
        card = get_card(name)
        rows = file_status(store, card)
        problems = _verify_rows(store, card, rows) if verify else []
        failed = failed or bool(problems)
        if json_out:
            row = {"name": name, "task": card.task, "repo": card.repo, "default_for": defaults.get(name)}
            print(json.dumps({**row, "files": rows, "problems": problems}))
        else:
            _print_card(name, card, rows, defaults.get(name), verify)
    if verify and not json_out:
        print("verified: " + ("problems found (marked ✗ and !)" if failed else "every present file"))
    if failed:
        raise typer.Exit(1)


def _check_names(names: list[str]) -> None:
    """Exit 2 on an unknown name, before anything downloads."""
    from metis_cli.assets.cards import get_card

    for name in names:
        if name not in FRONTENDS:
            try:
                get_card(name)
            except MetisError as exc:
                _err(f"{exc}; or {' / '.join(FRONTENDS)}")
                raise typer.Exit(2) from None


def _fetch_frontends(names: list[str]) -> bool:
    """Fetch the front-end resources among `names`, printing each path; False when one failed."""
    ok = True
    for name in [n for n in names if n in FRONTENDS]:
        try:
            from metis_cli import text
            from metis_cli.media import video

            fetch = {
                "zh-frontend": text.fetch_zh_frontend,
                "ja-frontend": text.fetch_ja_frontend,
                "face-detector": video.fetch_face_detector,
            }[name]
            print(fetch())
        except MetisError as exc:
            _err(str(exc))
            ok = False
    return ok


def _fetch_cards(store, cards: list[str], quiet: bool) -> bool:
    """Fetch and verify the cards' files, printing each path; False on the first failure."""
    try:
        for card, role, path in store.resolve_all(cards, progress=not quiet):
            store.verify(card, role, path)
            print(path)
    except MetisError as exc:
        _err(str(exc))
        return False
    return True


def download(
    names: list[str] = typer.Argument(
        None,
        help="Model cards (default: each task's default model), zh-frontend, ja-frontend, face-detector.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Fetch model files into the Hugging Face cache (only the files the cards name)."""
    from metis_cli.assets.cards import DEFAULT_MODEL, ModelStore, quiet_hub

    names = list(names or sorted(set(DEFAULT_MODEL.values())))
    _check_names(names)
    store = ModelStore(None, offline=None)
    if quiet:
        quiet_hub(True)
    ok = _fetch_frontends(names)
    ok = _fetch_cards(store, [n for n in names if n not in FRONTENDS], quiet) and ok
    if not ok:
        raise typer.Exit(1)


def doctor() -> None:
    """Print versions, devices, the espeak-ng library in use and where weights are looked for."""
    import torch

    from metis_cli import __version__
    from metis_cli.assets.cards import ModelStore

    info: dict = {
        "metis": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "threads": torch.get_num_threads(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    try:
        from metis_cli.text import espeak_info

        info["espeak"] = espeak_info()
    except MetisError as exc:
        info["espeak"] = f"unavailable: {exc}"
    store = ModelStore()
    info["checkpoint_dir"] = str(store.checkpoint_dir) if store.checkpoint_dir else "(Hugging Face cache)"
    info["offline"] = store.offline
    print(json.dumps(info, indent=2, default=str))


def register(app: typer.Typer) -> None:
    app.command("models")(models)
    app.command("download")(download)
    app.command("doctor")(doctor)
