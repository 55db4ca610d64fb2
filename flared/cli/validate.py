"""`flared validate`, `flared schema`, `flared render`: what the YAML says and implies."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from flared.cli.common import (
    EXIT_INVALID,
    EXIT_OK,
    CommandError,
    Subparsers,
    add_config_arg,
    add_json_arg,
    emit,
    load_or_exit,
    print_config_errors,
)
from flared.cli.text import Out


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "validate",
        help="check hermes-flare.yaml and report every problem",
        description="Parse and validate the config file (with ${VAR}s filled and FLARE_* overrides "
        "applied) and report every problem as FILE:LINE:COL: field: message. Changes nothing. "
        "Exits 0 when valid, 2 otherwise.",
    )
    add_config_arg(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "schema",
        help="print the JSON Schema of hermes-flare.yaml",
        description="Print the JSON Schema of hermes-flare.yaml (the committed copy is "
        "schema/hermes-flare.schema.json), for editors and the YAML language server.",
    )
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser(
        "render",
        help="print what the YAML implies for wrangler.toml or supervisord.conf",
        description="Print the wrangler.toml (Cloudflare) or supervisord.conf (local, or --image for "
        "the Agent container) that the config implies. Writes nothing.",
    )
    p.add_argument("what", choices=["wrangler", "supervisord"], help="which file to render")
    p.add_argument("--image", action="store_true", help="supervisord: render the Agent image's config")
    add_config_arg(p)
    p.set_defaults(func=cmd_render)


def cmd_validate(args: argparse.Namespace) -> int:
    loaded = load_or_exit(args)
    cfg = loaded.config
    data = {
        "valid": True,
        "file": str(loaded.path),
        "digest": loaded.digest,
        "bots": cfg.bot_names,
        "sandboxes": sorted(cfg.sandboxes),
        "cron": [j.name for j in cfg.cron],
    }

    def render(con: Out, d: dict[str, Any]) -> None:
        con.print(
            f"{con.style('ok', 'green')} {args.config or loaded.path.name}: {len(cfg.bots)} bot(s) "
            f"({', '.join(cfg.bot_names) or 'none'}), {len(cfg.sandboxes)} sandbox profile(s), "
            f"{len(cfg.cron)} cron job(s); digest {loaded.digest[:12]}"
        )

    emit(args, data, render)
    return EXIT_OK


def schema_document() -> dict[str, Any]:
    from flared.config.models import HermesFlareConfig

    schema = HermesFlareConfig.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://hermes-flare.dev/schema/hermes-flare.schema.json",
        **schema,
    }


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(schema_document(), indent=2, sort_keys=False))
    return EXIT_OK


def cmd_render(args: argparse.Namespace) -> int:
    if args.what == "supervisord":
        from flared.supervisor import Layout, flared_command, render_supervisord_conf

        if args.image:
            print(image_supervisord_conf(), end="")
            return EXIT_OK
        loaded = load_or_exit(args, check_state_dir=False)
        print(
            render_supervisord_conf(Layout(loaded.state_dir), flared_cmd=flared_command(loaded.path)), end=""
        )
        return EXIT_OK
    from flared.config import wrangler
    from flared.config.loader import ConfigError

    try:  # secrets live in Cloudflare: rendering needs none of them
        loaded = wrangler.load_for_render(getattr(args, "config", None))
    except ConfigError as exc:
        print_config_errors(exc, False)
        raise SystemExit(EXIT_INVALID) from None
    try:
        text = wrangler.render(loaded)
    except wrangler.RenderError as exc:
        raise CommandError(str(exc), EXIT_INVALID) from None
    print(text, end="")
    return EXIT_OK


IMAGE_STATE_DIR = Path("/var/lib/hermes-flare")
IMAGE_CONFIG = Path("/etc/hermes-flare/hermes-flare.yaml")


def image_supervisord_conf() -> str:
    """The committed `supervisord/supervisord.conf`: the Agent container's paths."""
    from flared.supervisor import Layout, render_supervisord_conf

    return render_supervisord_conf(
        Layout(IMAGE_STATE_DIR),
        flared_cmd=["/opt/hermes-flare/.venv/bin/flared", "run", "-c", str(IMAGE_CONFIG)],
        mirror_cmd=["/opt/hermes-flare/.venv/bin/flared", "logs", "--mirror", "-c", str(IMAGE_CONFIG)],
        stopwaitsecs=90,
    )
