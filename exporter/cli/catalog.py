"""Commands on what edgex knows: device profiles, runtime targets, and the JSON Schemas of its files."""

from __future__ import annotations

import json
from pathlib import Path

import click

from exporter.cli.common import JSON_OPT, command, emit, get_profile
from exporter.errors import UsageError


@click.group()
def profiles() -> None:
    """Device profiles: list, show, validate."""


@profiles.command("list")
@JSON_OPT
@click.pass_context
@command
def profiles_list(ctx: click.Context, as_json: bool) -> int:
    """List every known profile (shipped and from --profiles-dir / EDGEX_PROFILES)."""
    from exporter.profiles import all_profiles

    found = all_profiles(ctx.obj["profiles_dirs"])
    data = [
        {
            "id": p.id,
            "name": p.name,
            "class": p.device_class,
            "target": p.target,
            "threads": p.threads,
            "budgets": p.budgets.model_dump(mode="json"),
        }
        for p in found.values()
    ]

    def text(rows: list[dict]) -> str:
        out = [f"{'id':<30} {'class':<19} {'target':<9} latency budget"]
        for r in rows:
            lat = r["budgets"]["latency"]
            out.append(
                f"{r['id']:<30} {r['class']:<19} {r['target']:<9} p{lat['percentile']:g} <= {lat['max_ms']:g} ms"
            )
        return "\n".join(out)

    emit(data, as_json, text)
    return 0


@profiles.command("show")
@click.argument("profile_id")
@JSON_OPT
@click.pass_context
@command
def profiles_show(ctx: click.Context, profile_id: str, as_json: bool) -> int:
    """Show one profile with its facts and sources."""
    prof = get_profile(ctx, profile_id)
    emit(prof.model_dump(mode="json", by_alias=True), as_json, lambda d: json.dumps(d, indent=2, sort_keys=False))
    return 0


@profiles.command("validate")
@click.argument("path", type=click.Path(path_type=Path))
@JSON_OPT
@command
def profiles_validate(path: Path, as_json: bool) -> int:
    """Validate a profile YAML file, or every *.yaml in a folder."""
    from exporter.profiles import load_profile_file

    files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    if not files:
        raise UsageError("no *.yaml profiles in this folder", path=path, fix="give a profile file or folder")
    ids = [load_profile_file(f).id for f in files]
    emit({"valid": ids}, as_json, lambda d: "\n".join(f"{i}: ok" for i in d["valid"]))
    return 0


@click.group()
def targets() -> None:
    """Runtime targets: list, show."""


@targets.command("list")
@JSON_OPT
@command
def targets_list(as_json: bool) -> int:
    """List the runtime targets and what each produces."""
    from exporter.targets import all_targets

    data = [
        {
            "id": t.id,
            "execution_provider": t.execution_provider,
            "package_format": t.package_format,
            "static_shapes": t.static_shapes,
            "activation_type": t.quantization.activation_type,
            "weight_type": t.quantization.weight_type,
        }
        for t in all_targets().values()
    ]
    emit(
        data,
        as_json,
        lambda rows: "\n".join(
            f"{r['id']:<9} {r['execution_provider']:<27} .{r['package_format']:<5} "
            f"{'static' if r['static_shapes'] else 'dynamic'} shapes, INT8 {r['activation_type']}/{r['weight_type']}"
            for r in rows
        ),
    )
    return 0


@targets.command("show")
@click.argument("target_id")
@JSON_OPT
@command
def targets_show(target_id: str, as_json: bool) -> int:
    """Show one target's declaration (the YAML file carries the reason for each choice)."""
    from exporter.targets import get_target

    emit(get_target(target_id, where="targets").model_dump(mode="json"), as_json, lambda d: json.dumps(d, indent=2))
    return 0


@click.command()
@click.argument("kind", type=click.Choice(["recipe", "profile", "target", "manifest"]))
@JSON_OPT
@command
def schema(kind: str, as_json: bool) -> int:
    """Print the JSON Schema of a recipe, profile, target or release manifest (for editors and release pipelines; JSON with or without --json)."""
    from exporter.manifest_schema import manifest_json_schema
    from exporter.profiles import DeviceProfile
    from exporter.recipe import Recipe
    from exporter.targets import Target

    if kind == "manifest":
        document = manifest_json_schema()
    else:
        document = {"recipe": Recipe, "profile": DeviceProfile, "target": Target}[kind].model_json_schema(by_alias=True)
    click.echo(json.dumps(document, indent=2, sort_keys=True))
    return 0


COMMANDS = [profiles, targets, schema]
