"""The ``radio`` command line. ``main(argv)`` is what the console script and the tests call."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .config import ConfigError, config_to_yaml, load_config, split_config_args

__all__ = ["main", "JOBS"]


def _job_classes() -> dict:
    """Job name -> its config dataclass. Imported lazily: ``radio --help`` must not pay for torch."""
    from .cache import CacheJobConfig

    jobs = {"cache": CacheJobConfig}
    try:
        from .train import TrainJobConfig

        jobs["train"] = TrainJobConfig
    except ImportError:
        pass
    try:
        from .evaluate import EvalJobConfig

        jobs["eval"] = EvalJobConfig
    except ImportError:
        pass
    try:
        from .quickstart import QuickstartConfig

        jobs["quickstart"] = QuickstartConfig
    except ImportError:
        pass
    return jobs


JOBS = ("cache", "train", "eval", "quickstart")


def _infer_job(config: str, jobs: dict) -> str:
    if config in jobs:
        return config
    stem = Path(config).stem
    for name in jobs:
        if stem.startswith(name):
            return name
    import yaml

    keys = set((yaml.safe_load(Path(config).read_text()) or {}).keys()) if Path(config).is_file() else set()
    from dataclasses import fields

    fits = [n for n, cls in jobs.items() if keys and keys <= {f.name for f in fields(cls)}]
    if len(fits) == 1:
        return fits[0]
    raise ConfigError(
        f"cannot tell which job {config} configures; name the file cache*.yaml, train*.yaml, eval*.yaml "
        f"or quickstart*.yaml, or pass the job name ({', '.join(jobs)})"
    )


def resolve(job: str, args: list[str]):
    """(config object, resolved YAML) for ``job`` from ``[CONFIG] [key=value ...]``."""
    jobs = _job_classes()
    path, overrides = split_config_args(args)
    from .cache import validate

    cfg = load_config(jobs[job], path, overrides, validate=validate if job == "cache" else None)
    return cfg, config_to_yaml(cfg)


def cmd_teachers(ns) -> int:
    from teachers import REGISTRY, create_teacher, get_spec_template, list_teachers

    rows = [("name", "family", "source", "input", "summary", "features (dim @ grid)", "fingerprint")]
    for name in list_teachers():
        s = get_spec_template(name)
        fp = "-"
        # The fingerprint hashes the weights, so it needs them loaded: always for the tiny presets
        # (milliseconds), for the real ones only when asked (seconds to minutes each).
        if REGISTRY[name].tiny or ns.fingerprints:
            try:
                fp = create_teacher(name).spec.fingerprint
            except Exception as e:  # real weights not in the local cache, offline: say so in the table
                fp = f"(not loadable: {type(e).__name__})"
        rows.append(
            (
                name,
                s.family,
                s.source,
                "x".join(map(str, s.input_size)),
                str(s.summary_dim or "-"),
                f"{s.feature_dim} @ {s.feature_grid[0]}x{s.feature_grid[1]}",
                fp,
            )
        )
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for j, r in enumerate(rows):
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
        if j == 0:
            print("  ".join("-" * w for w in widths))
    if not ns.fingerprints:
        print(
            "\n'-': `radio teachers --fingerprints` loads each real teacher (hub id or local cache) to "
            "hash its weights."
        )
    return 0


def cmd_config_show(ns) -> int:
    jobs = _job_classes()
    job = _infer_job(ns.config, jobs)
    path = None if ns.config in jobs else ns.config
    cfg = load_config(jobs[job], path, ns.overrides)
    print(f"# radio {job}: resolved config (defaults <- {path or 'no file'} <- {len(ns.overrides)} overrides)")
    print(config_to_yaml(cfg), end="")
    return 0


CACHE_USAGE = """usage: radio cache [CONFIG] [key=value ...]      build or complete a cache
       radio cache info CACHE                     what a cache holds
       radio cache verify CACHE [--sample N]      check files and keys, recompute N rows
       radio cache drop CACHE TEACHER             remove one teacher's targets
       radio cache repair CACHE [CONFIG] [k=v]    hash every file against its record, set damaged files
                                                  aside, recompute them, rebuild statistics and manifest

Keys and defaults: `radio config show cache`. Example:
  radio cache configs/cache-samples.yaml views.num_views=4 teachers.tiny-sam.actors=2"""


def cmd_cache(ns) -> int:
    args = list(ns.args)
    if args and args[0] in ("-h", "--help"):
        print(CACHE_USAGE)
        return 0
    if args and args[0] in ("info", "verify", "drop"):
        from . import cache_tools

        return cache_tools.main(args)
    from .cache import repair_config, run_cache_job

    if args and args[0] == "repair":
        cfg = repair_config(args[1:])
        resolved = config_to_yaml(cfg)
    else:
        cfg, resolved = resolve("cache", args)
    summary = run_cache_job(cfg, resolved)
    print(summary.format())
    return 0


def cmd_export(ns) -> int:
    """``radio export STUDENT --onnx OUT.onnx | --pretrained DIR | --push-to-hub ORG/NAME``."""
    import radio
    from radio.export import export_onnx

    if not (ns.onnx or ns.pretrained or ns.push_to_hub):
        print(
            "radio export: say what to write: --onnx OUT.onnx, --pretrained DIR or --push-to-hub ORG/NAME",
            file=sys.stderr,
        )
        return 2
    from .config import check_output_dir

    if ns.pretrained:
        check_output_dir(ns.pretrained, "--pretrained")  # before the student is loaded or anything is written
    if ns.onnx:
        check_output_dir(os.path.dirname(os.path.abspath(ns.onnx)), "--onnx")
    model = radio.load_student(ns.student)
    if ns.onnx:
        rep = export_onnx(model, ns.onnx, opset=ns.opset, check=not ns.no_check, input_dtype=ns.onnx_input)
        diff = "not checked" if rep["max_abs_diff"] is None else f"max |onnxruntime - torch| {rep['max_abs_diff']:.2e}"
        kind = "uint8 [0, 255]" if ns.onnx_input == "uint8" else "float32 [0, 1]"
        print(
            f"wrote {rep['path']}: input images (B, 3, H, W) {kind}; outputs {', '.join(rep['outputs'])}; {diff}"
            + (f"; weights in {rep['external_data']} (keep it beside the .onnx file)" if rep["external_data"] else "")
        )
    if ns.pretrained:
        print(f"wrote {model.save_pretrained(ns.pretrained)} (load it with radio.load_student or torch.hub)")
    if ns.push_to_hub:
        print(f"pushed to the hub: {model.push_to_hub(ns.push_to_hub, private=not ns.public)}")
    return 0


def _run_job(job: str):
    def run(ns) -> int:
        import importlib

        mod = importlib.import_module(f".{ {'eval': 'evaluate'}.get(job, job) }", __package__)
        return mod.main(list(ns.args))

    return run


def cmd_sync(ns) -> int:
    from .tracking import replay_pending

    n = replay_pending(ns.path, ns.tracking_uri)
    print(f"sent {n} MLflow record(s) from {ns.path}")
    return 0


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by input, printed as one clear message instead of a traceback."""
    from radio.cache import CacheError
    from radio.checkpoint import CheckpointError
    from radio.export import OnnxExportError
    from teachers import TeacherLoadError, UnknownTeacher

    from .cache import RayUnavailable
    from .compare import CompareError
    from .config import DiskFull
    from .sources import SourceError
    from .tracking import TrackingUnavailable
    from .train import TrainingDiverged

    return (
        CacheError,
        RayUnavailable,
        DiskFull,
        CompareError,
        SourceError,
        TeacherLoadError,
        UnknownTeacher,
        TrackingUnavailable,
        TrainingDiverged,
        CheckpointError,
        FileNotFoundError,
        OnnxExportError,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="radio",
        description="Build agglomerative vision models: cache frozen teachers (Ray), distill students (Accelerate), "
        "compare them (MLflow).",
        epilog="--verbose (anywhere on the line) shows Ray's and MLflow's informational output.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    t = sub.add_parser("teachers", help="list the teacher registry")
    t.add_argument("--fingerprints", action="store_true", help="load each teacher and show its fingerprint")
    t.set_defaults(func=cmd_teachers)
    c = sub.add_parser("config", help="configuration tools")
    csub = c.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    show = csub.add_parser("show", help="print the resolved config: defaults <- CONFIG <- key=value overrides")
    show.add_argument("config", help="a YAML file, or a job name (cache, train, eval, quickstart) for its defaults")
    show.add_argument("overrides", nargs="*", help="key.sub=value")
    show.set_defaults(func=cmd_config_show)
    cache = sub.add_parser(
        "cache",
        help="build a teacher cache: radio cache [CONFIG] [key=value ...]; radio cache info|verify|drop CACHE",
        description="radio cache [CONFIG] [key=value ...] builds or completes a cache. radio cache info CACHE, "
        "radio cache verify CACHE [--sample N], radio cache drop CACHE TEACHER inspect and edit one.",
    )
    cache.add_argument("args", nargs=argparse.REMAINDER)
    cache.set_defaults(func=cmd_cache)
    ex = sub.add_parser(
        "export", help="write a student as ONNX, as a hub-style directory, or push it to the Hugging Face hub"
    )
    ex.add_argument("student", help="a student directory, MLflow run id or URI, or hub id")
    ex.add_argument(
        "--onnx",
        metavar="OUT.onnx",
        help="ONNX model with dynamic batch and resolution, checked against PyTorch with onnxruntime",
    )
    ex.add_argument(
        "--onnx-input",
        choices=("float32", "uint8"),
        default="float32",
        help="the ONNX graph's input: float32 images in [0, 1] (default) or uint8 in [0, 255]",
    )
    ex.add_argument("--opset", type=int, default=18)
    ex.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    ex.add_argument("--pretrained", metavar="DIR", help="save_pretrained: weights, config and a model card")
    ex.add_argument(
        "--push-to-hub", metavar="ORG/NAME", help="upload to the Hugging Face hub (needs a token: `hf auth login`)"
    )
    ex.add_argument("--public", action="store_true", help="with --push-to-hub: a public repository (default private)")
    ex.set_defaults(func=cmd_export)
    sy = sub.add_parser(
        "sync",
        help="send the MLflow records a run kept while its tracking server did not answer",
        description=f"radio sync OUTPUT sends OUTPUT/{'mlflow-pending.jsonl'} (written when the tracking "
        "store stopped answering mid-run) to the store, in order; what cannot be sent stays for the next try.",
    )
    sy.add_argument("path", help="a training output directory (or its pending file)")
    sy.add_argument("--tracking-uri", help="send to this store instead of the one each record names")
    sy.set_defaults(func=cmd_sync)
    for name, help_ in (
        ("train", "distill a student from a cache: radio train [CONFIG] [key=value ...]"),
        ("eval", "evaluate a student: radio eval RUN_ID_OR_CHECKPOINT [key=value ...]"),
        ("compare", "table of student runs: radio compare [--experiment NAME] [--sort METRIC]"),
        ("quickstart", "the whole pipeline on built-in samples and tiny teachers"),
    ):
        sp = sub.add_parser(name, help=help_, add_help=False)
        sp.add_argument("args", nargs=argparse.REMAINDER)
        sp.set_defaults(func=_run_job(name))
    return p


QUIET_LOGGERS = ("mlflow", "alembic", "ray._private.worker", "ray._private.services")
RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"  # its start-up notice is a WARNING


def configure_output(verbose: bool):
    """Quiet by default: MLflow's INFO lines (database setup, system metrics), its artifact progress bars
    and Ray's start-up notices are informational; ``--verbose`` brings them back. Warnings still show."""
    import logging
    import os

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger(RAY_AUTH_LOGGER).setLevel(logging.INFO if verbose else logging.ERROR)
    if not verbose:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow sets its loggers' level from this on import
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = "--verbose" in argv
    argv = [
        a for a in argv if a != "--verbose"
    ]  # anywhere on the line: radio --verbose cache ..., radio cache ... --verbose
    configure_output(verbose)
    parser = build_parser()
    if argv and argv[0] in ("train", "eval", "compare", "quickstart", "cache"):
        # argparse.REMAINDER drops a leading "--option"; these subcommands parse their own arguments
        ns = argparse.Namespace(args=argv[1:], func=cmd_cache if argv[0] == "cache" else _run_job(argv[0]))
    else:
        ns = parser.parse_args(argv)
    if not getattr(ns, "func", None):
        parser.print_help()
        return 0 if not argv else 2
    try:
        return int(ns.func(ns) or 0)
    except ConfigError as e:
        print(f"radio: config error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # argparse inside a subcommand
        return int(e.code or 0) if isinstance(e.code, int) else 2
    except _user_errors() as e:
        print(f"radio: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # no space left, from any writer: one line, never a traceback over finished work
        import errno

        from radio.cache.store import object_store_error

        from .config import disk_full

        store = object_store_error(e)
        if store is not None:
            print(f"radio: error: {store}", file=sys.stderr)
            return 2
        full = disk_full(e)
        if full is not None:
            print(
                f"radio: error: no space left on device ({full}). Work finished before this point is kept; "
                "free space and rerun the same command",
                file=sys.stderr,
            )
            return 2
        if isinstance(e, OSError) and e.errno in (errno.EROFS, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EISDIR):
            print(
                f"radio: error: cannot write {e.filename or ''}: {e.strerror}. Choose another destination "
                "or fix its permissions",
                file=sys.stderr,
            )
            return 2
        raise
    except KeyboardInterrupt as e:
        if str(e):  # the job said what was kept and how to go on
            print(str(e), file=sys.stderr)
        elif argv and argv[0] == "cache":
            print(
                "radio cache: interrupted; finished shards are kept, rerun the same command to resume", file=sys.stderr
            )
        else:
            print(f"radio {argv[0] if argv else ''}: interrupted".rstrip(), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
