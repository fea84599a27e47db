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


def register(app: typer.Typer) -> None:
    @app.command("models")
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
            problems: list[str] = []
            if verify:
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
                        failed = True
            present = sum(r["path"] is not None for r in rows)
            if json_out:
                print(
                    json.dumps(
                        {
                            "name": name,
                            "task": card.task,
                            "repo": card.repo,
                            "default_for": defaults.get(name),
                            "files": rows,
                            "problems": problems,
                        }
                    )
                )
                continue
            tag = f" (default for {defaults[name]})" if name in defaults else ""
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
        if verify and not json_out:
            print("verified: " + ("problems found (marked ✗ and !)" if failed else "every present file"))
        if failed:
            raise typer.Exit(1)

    @app.command("download")
    def download(
        names: list[str] = typer.Argument(
            None,
            help="Model cards (default: each task's default model), zh-frontend, ja-frontend, face-detector.",
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    ) -> None:
        """Fetch model files into the Hugging Face cache (only the files the cards name)."""
        from metis_cli.assets.cards import DEFAULT_MODEL, ModelStore, get_card, quiet_hub

        names = list(names or sorted(set(DEFAULT_MODEL.values())))
        for name in names:  # an unknown name is a usage error, before anything downloads
            if name not in FRONTENDS:
                try:
                    get_card(name)
                except MetisError as exc:
                    _err(f"{exc}; or {' / '.join(FRONTENDS)}")
                    raise typer.Exit(2) from None
        store = ModelStore(None, offline=None)
        if quiet:
            quiet_hub(True)
        failed = False
        for name in [n for n in names if n in FRONTENDS]:
            try:
                from metis_cli import text
                from metis_cli.media import video

                fetch = {
                    "zh-frontend": text.fetch_zh_frontend,
                    "ja-frontend": text.fetch_ja_frontend,
                    "face-detector": video.fetch_face_detector,
                }[name]
                path = fetch()
                print(path)
            except MetisError as exc:
                _err(str(exc))
                failed = True
        cards = [n for n in names if n not in FRONTENDS]
        try:
            for card, role, path in store.resolve_all(cards, progress=not quiet):
                store.verify(card, role, path)
                print(path)
        except MetisError as exc:
            _err(str(exc))
            failed = True
        if failed:
            raise typer.Exit(1)

    @app.command("doctor")
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
