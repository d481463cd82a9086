"""One implementation trained on one workload, in this process; prints one JSON line.

    bench/.venv/bin/python bench/trial.py WORKLOAD IMPL [--seed N] [--quick] [--rows N] [--json]

The data comes through mlpkit's own code (load_config, prepare, Prepared.tensors): every
implementation gets the same split and the same preprocessed float32 tensors, built before the
clock starts. Only training is timed (time.perf_counter around it); quality is then scored on
the same test rows by the task's own scorer (R2 in the target's units, accuracy). bench/run.py
runs this once per (repeat, implementation); see bench/README.md.

IMPL `prepare` generates the cached data of a workload (W3's Parquet, W5's CSVs) and exits.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from workloads import (
    CACHE,
    IMPLS,
    W3_QUICK_ROWS,
    W3_ROWS,
    W5_QUICK_ROWS,
    W5_ROWS,
    Workload,
    threads_for,
    w3_path,
    workload,
)

from mlpkit.config.load import LoadedConfig, load_config
from mlpkit.train.loop import Tensors
from mlpkit.train.prepare import Prepared, prepare
from mlpkit.train.tasks import Regression

BENCH = Path(__file__).resolve().parent
CPU = torch.device("cpu")


@dataclass
class Data:
    """A workload's config, prepared data and tensors, as every implementation gets them."""

    work: Workload
    loaded: LoadedConfig
    prepared: Prepared
    train: Tensors  # for W4 (a stream), the sample mlpkit fits preprocessing on; unused
    test: Tensors
    layers: list[tuple[int, str | None]]  # (units, activation); the output's is None (logits)
    optimizer: str  # "adam" or "sgd"
    lr: float
    batch: int
    epochs: int
    iterations: int | None  # W4: batches per epoch of the endless stream

    @property
    def regression(self) -> bool:
        return isinstance(self.prepared.task, Regression)

    @property
    def quality_name(self) -> str:
        return "r2" if self.regression else "accuracy"

    @property
    def width(self) -> int:
        return int(self.test.x.shape[1])

    @property
    def samples(self) -> int:
        """Rows trained on, all epochs together."""
        rows = self.iterations * self.batch if self.iterations else self.train.x.shape[0]
        return self.epochs * int(rows)

    @property
    def steps(self) -> int:
        per_epoch = self.iterations or math.ceil(self.train.x.shape[0] / self.batch)
        return self.epochs * per_epoch

    def score(self, outputs: torch.Tensor) -> float:
        """Quality on the test rows from outputs in model space (scaled target, or logits)."""
        outputs = outputs.detach().float().reshape(-1, 1)
        return self.prepared.task.score(self.test.y, outputs, [self.quality_name])[
            self.quality_name
        ]


def load(work: Workload) -> Data:
    loaded = load_config(work.config, work.overrides)
    prepared = prepare(loaded)
    cfg = prepared.config
    dense = [layer for layer in cfg.model.layers if layer.type == "dense"]
    if len(dense) != len(cfg.model.layers):
        raise SystemExit("the bench models are dense layers only")
    if cfg.model.inputs is not None and any(s.layers for s in cfg.model.inputs.values()):
        raise SystemExit("named inputs with layers of their own are not benchmarked")
    layers: list[tuple[int, str | None]] = [
        (layer.units, None if layer.activation == "linear" else layer.activation) for layer in dense
    ]
    layers[-1] = (layers[-1][0], None)  # regression: linear; binary: trained on the logits
    return Data(
        work,
        loaded,
        prepared,
        prepared.tensors(prepared.split.train, CPU),
        prepared.tensors(prepared.split.test, CPU),
        layers,
        cfg.training.optimizer.name,
        cfg.training.optimizer.lr,
        cfg.training.batch_size,
        cfg.training.epochs,
        cfg.training.iterations_per_epoch if prepared.streams else None,
    )


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


def sequential(data: Data, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    modules: list[nn.Module] = []
    width = data.width
    for units, activation in data.layers:
        modules.append(nn.Linear(width, units))
        if activation is not None:
            modules.append(ACTIVATIONS[activation]())
        width = units
    return nn.Sequential(*modules)


def optimizer(data: Data, model: nn.Module, fused: bool) -> torch.optim.Optimizer:
    options: dict[str, Any] = {"lr": data.lr}
    if fused:
        options["fused"] = True
    if data.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), **options)
    if data.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), **options)
    raise SystemExit(f"optimizer {data.optimizer} is not benchmarked")


def loss_fn(data: Data) -> nn.Module:
    return nn.MSELoss() if data.regression else nn.BCEWithLogitsLoss()


def xor_batch(batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """W4's endless data, drawn in the loop: x in {0, 1}^2, y = x1 xor x2, [batch, 1]."""
    x = torch.randint(0, 2, (batch, 2), generator=generator).float()
    return x, (x[:, 0] != x[:, 1]).float()[:, None]


def xor_rows(data: Data, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """W4 pre-drawn for the peers that take arrays: epochs x iterations x batch rows."""
    assert data.iterations is not None
    x, y = xor_batch(
        data.epochs * data.iterations * data.batch, torch.Generator().manual_seed(seed)
    )
    return x.numpy(), y.numpy()


class XorBatches(torch.utils.data.IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    """One epoch of W4 batches per iteration, drawn from a generator kept across epochs."""

    def __init__(self, data: Data, seed: int) -> None:
        super().__init__()
        assert data.iterations is not None
        self.iterations, self.batch = data.iterations, data.batch
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(self.iterations):
            yield xor_batch(self.batch, self.generator)


def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


Result = dict[str, Any]


# --- implementations --------------------------------------------------------------------------


def run_mlpkit(work: Workload) -> Result:
    """mlpkit's real train flow, as `mlpkit train CONFIG --quiet --set ...` calls it."""
    from mlpkit.flows.train import train

    # The config's own seed: it fixes the split the peers train on too (--seed is theirs).
    overrides = list(work.overrides)
    with tempfile.TemporaryDirectory(prefix="mlpkit-bench-") as runs:
        started = time.perf_counter()
        result = train(load_config(work.config, overrides), Path(runs), "cpu")
        whole = time.perf_counter() - started
        rss = peak_rss_mb()
        metrics = json.loads((result.run_dir / "metrics.json").read_text())
        training = json.loads((result.run_dir / "run.json").read_text())["training"]
    # run.json's training.seconds: the epochs' time, checkpoints (and any validation) included
    seconds = float(training["seconds"])
    notes = [f"engine {training['engine']}", f"whole train() {whole:.2f} s"]
    data = load(work)  # after training, untimed: the split's counts
    name = "r2" if "r2" in metrics["test"] else "accuracy"
    return {
        "train_seconds": seconds,
        "steps": int(training["steps"]),
        "samples": data.samples,
        "quality_name": name,
        "quality": metrics["test"][name],
        "peak_rss_mb": rss,
        "threads": training["threads"],
        "notes": "; ".join(notes),
    }


def hand_loop(data: Data, seed: int, fused: bool) -> Result:
    """The hand-written loop: rows gathered in a fresh random order each epoch, then sliced."""
    model = sequential(data, seed)
    opt = optimizer(data, model, fused)
    criterion = loss_fn(data)
    generator = torch.Generator().manual_seed(seed)
    x, y, batch = data.train.x, data.train.y, data.batch
    model.train()
    started = time.perf_counter()
    for _ in range(data.epochs):
        if data.iterations is not None:  # W4: each batch drawn in the loop
            for _ in range(data.iterations):
                xb, yb = xor_batch(batch, generator)
                loss = criterion(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            continue
        order = torch.randperm(x.shape[0], generator=generator)
        xs, ys = x[order], y[order]
        for start in range(0, xs.shape[0], batch):
            loss = criterion(model(xs[start : start + batch]), ys[start : start + batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - started
    return finish(data, seconds, data.steps, predict(model, data.test.x))


def run_hand(data: Data, seed: int) -> Result:
    result = hand_loop(data, seed, fused=True)
    how = "batches drawn in the loop" if data.iterations else "randperm + gather + slice"
    result["notes"] = f"fused {data.optimizer}, {how}"
    return result


def run_hand_eager(data: Data, seed: int) -> Result:
    result = hand_loop(data, seed, fused=False)
    result["notes"] = f"default (foreach) {data.optimizer}, default threads"
    return result


def run_dataloader(data: Data, seed: int) -> Result:
    model = sequential(data, seed)
    opt = optimizer(data, model, fused=False)
    criterion = loss_fn(data)
    generator = torch.Generator().manual_seed(seed)
    loader: torch.utils.data.DataLoader[Any]
    if data.iterations is not None:
        loader = torch.utils.data.DataLoader(XorBatches(data, seed), batch_size=None)
        note = "DataLoader(IterableDataset drawing batches, batch_size=None)"
    else:
        dataset = torch.utils.data.TensorDataset(data.train.x, data.train.y)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=data.batch, shuffle=True, generator=generator
        )
        note = "DataLoader(TensorDataset, shuffle=True)"
    model.train()
    started = time.perf_counter()
    for _ in range(data.epochs):
        for xb, yb in loader:
            loss = criterion(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - started
    result = finish(data, seconds, data.steps, predict(model, data.test.x))
    result["notes"] = note
    return result


def run_sklearn(data: Data, seed: int) -> Result:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    hidden = data.layers[:-1]
    activations = {activation for _, activation in hidden}
    if len(activations) != 1:
        raise SystemExit(f"sklearn needs one hidden activation, not {activations}")
    activation = {"relu": "relu", "tanh": "tanh"}[str(activations.pop())]
    x, y, epochs = data.train.x.numpy(), data.train.y.numpy()[:, 0], data.epochs
    notes = ["squared_error/2 loss (regression)" if data.regression else "log loss"]
    if data.iterations is not None:
        x, y2 = xor_rows(data, seed)
        y, epochs = y2[:, 0].astype(int), 1
        notes.append(f"one pass over {len(x):,} pre-drawn rows")
    options: dict[str, Any] = {
        "hidden_layer_sizes": tuple(units for units, _ in hidden),
        "activation": activation,
        "solver": data.optimizer,
        "learning_rate_init": data.lr,
        "batch_size": data.batch,
        "max_iter": epochs,
        "tol": 0.0,
        "n_iter_no_change": max(epochs, 1),
        "alpha": 0.0,
        "early_stopping": False,
        "shuffle": True,
        "random_state": seed,
    }
    if data.optimizer == "sgd":
        options |= {"momentum": 0.0, "nesterovs_momentum": False, "learning_rate": "constant"}
    model = (MLPRegressor if data.regression else MLPClassifier)(**options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        started = time.perf_counter()
        model.fit(x, y)
        seconds = time.perf_counter() - started
    test = data.test.x.numpy()
    if data.regression:
        outputs = torch.from_numpy(np.asarray(model.predict(test), dtype=np.float32))
    else:
        p = np.clip(model.predict_proba(test)[:, 1], 1e-7, 1 - 1e-7)
        outputs = torch.from_numpy(np.log(p / (1 - p)))  # logits, as the task scores them
    result = finish(data, seconds, data.steps, outputs)
    result["notes"] = "; ".join(notes)
    return result


class Squeeze(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.squeeze(-1)


def run_skorch(data: Data, seed: int) -> Result:
    from skorch import NeuralNetBinaryClassifier, NeuralNetRegressor

    model = sequential(data, seed)
    opt = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[data.optimizer]
    common: dict[str, Any] = {
        "optimizer": opt,
        "lr": data.lr,
        "batch_size": data.batch,
        "train_split": None,
        "verbose": 0,
        "iterator_train__shuffle": True,
        "device": "cpu",
    }
    notes = []
    if data.regression:
        net: Any = NeuralNetRegressor(model, criterion=nn.MSELoss, max_epochs=data.epochs, **common)
        x, y = data.train.x.numpy(), data.train.y.numpy()
    else:
        net = NeuralNetBinaryClassifier(
            nn.Sequential(model, Squeeze()),
            max_epochs=1 if data.iterations else data.epochs,
            **common,
        )
        x, y2 = xor_rows(data, seed)
        y = y2[:, 0]
        notes.append(f"one pass over {len(x):,} pre-drawn rows")
    torch.manual_seed(seed)
    started = time.perf_counter()
    net.fit(x, y)
    seconds = time.perf_counter() - started
    result = finish(data, seconds, data.steps, predict(net.module_, data.test.x))
    result["notes"] = "; ".join([type(net).__name__, *notes])
    return result


def run_lightning(data: Data, seed: int) -> Result:
    import logging

    import lightning as L

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")

    class Module(L.LightningModule):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net, self.criterion = net, loss_fn(data)

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> Any:
            x, y = batch
            return self.criterion(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return optimizer(data, self.net, fused=False)

    model = sequential(data, seed)
    loader: torch.utils.data.DataLoader[Any]
    if data.iterations is not None:
        loader = torch.utils.data.DataLoader(XorBatches(data, seed), batch_size=None)
    else:
        dataset = torch.utils.data.TensorDataset(data.train.x, data.train.y)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=data.batch,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
        )
    trainer = L.Trainer(
        max_epochs=data.epochs,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        accelerator="cpu",
        devices=1,
    )
    started = time.perf_counter()
    trainer.fit(Module(model), loader)
    seconds = time.perf_counter() - started
    result = finish(data, seconds, data.steps, predict(model, data.test.x))
    result["notes"] = f"lightning {L.__version__}"
    return result


def run_keras(data: Data, seed: int) -> Result:
    os.environ["KERAS_BACKEND"] = "torch"
    import keras

    keras.utils.set_random_seed(seed)
    layers: list[Any] = [keras.Input(shape=(data.width,))]
    layers += [keras.layers.Dense(units, activation=act) for units, act in data.layers]
    model = keras.Sequential(layers)
    # torch's Adam epsilon (Keras's default is 1e-7)
    opt = (
        keras.optimizers.Adam(learning_rate=data.lr, epsilon=1e-8)
        if data.optimizer == "adam"
        else keras.optimizers.SGD(learning_rate=data.lr)
    )
    loss = "mse" if data.regression else keras.losses.BinaryCrossentropy(from_logits=True)
    model.compile(optimizer=opt, loss=loss)
    notes = [f"keras {keras.__version__}, backend {keras.backend.backend()}"]
    x, y, epochs = data.train.x.numpy(), data.train.y.numpy(), data.epochs
    if data.iterations is not None:
        x, y = xor_rows(data, seed)
        epochs = 1
        notes.append(f"one pass over {len(x):,} pre-drawn rows")
    started = time.perf_counter()
    model.fit(x, y, batch_size=data.batch, epochs=epochs, shuffle=True, verbose=0)
    seconds = time.perf_counter() - started
    outputs = model.predict(data.test.x.numpy(), batch_size=4096, verbose=0)
    result = finish(data, seconds, data.steps, torch.as_tensor(np.asarray(outputs)))
    result["notes"] = "; ".join(notes)
    return result


def finish(data: Data, seconds: float, steps: int, outputs: torch.Tensor) -> Result:
    return {
        "train_seconds": seconds,
        "steps": steps,
        "samples": data.samples,
        "quality_name": data.quality_name,
        "quality": data.score(outputs),
        "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(),
    }


PEERS: dict[str, Callable[[Data, int], Result]] = {
    "hand": run_hand,
    "hand_eager": run_hand_eager,
    "dataloader": run_dataloader,
    "sklearn": run_sklearn,
    "skorch": run_skorch,
    "lightning": run_lightning,
    "keras": run_keras,
}
NEEDS = {"sklearn": "sklearn", "skorch": "skorch", "lightning": "lightning", "keras": "keras"}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --- data generation --------------------------------------------------------------------------


def make_w3(rows: int) -> Path:
    """W3's table: 16 standard normal features; y a fixed linear plus nonlinear function with
    noise (seed 0), written once as Parquet (float32 columns, row groups of 131,072)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = w3_path(rows)
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, 16), dtype=np.float32)
    weights = np.random.default_rng(16).standard_normal(16).astype(np.float32)
    y = (
        x @ weights
        + 1.5 * np.sin(x[:, 0] * x[:, 1])
        + 0.5 * x[:, 2] ** 2
        - np.abs(x[:, 3])
        + 0.1 * rng.standard_normal(rows, dtype=np.float32)
    ).astype(np.float32)
    columns = {f"x{i + 1}": x[:, i] for i in range(16)} | {"y": y}
    partial = path.with_suffix(".partial")
    pq.write_table(pa.table(columns), partial, row_group_size=131_072)
    partial.rename(path)
    return path


def w5_csv(rows: int) -> Path:
    from stream_memory import make_csv

    path = CACHE / f"stream-{rows}.csv"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        make_csv(partial, rows)
        partial.rename(path)
    return path


# --- W5: a streamed CSV, measured from outside the training process ---------------------------


def run_w5(impl: str, rows: int, seed: int) -> Result:
    """mlpkit (`mlpkit train` with data.stream: true) or the pandas peer on the rows-row CSV,
    each a child process whose peak PSS (summed over its DataLoader workers) is sampled."""
    from stream_memory import CONFIG, tree_pss

    csv = w5_csv(rows)
    with tempfile.TemporaryDirectory(prefix="mlpkit-bench-w5-") as tmp:
        if impl == "mlpkit":
            config = Path(tmp) / "w5.yaml"
            config.write_text(CONFIG.format(seed=seed, path=csv, stream="true"))
            command = [sys.executable, "-m", "mlpkit", "train", str(config), "--quiet"]
            command += ["--runs-dir", str(Path(tmp) / "runs")]
        elif impl == "hand":
            command = [sys.executable, str(BENCH / "stream_hand.py"), str(csv), "--seed", str(seed)]
        else:
            raise SystemExit(f"W5 has no {impl} implementation")
        started = time.perf_counter()
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        peak = 0
        while process.poll() is None:
            peak = max(peak, tree_pss(process.pid))
            time.sleep(0.02)
        wall = time.perf_counter() - started
        out = process.stdout.read() if process.stdout else ""
        err = process.stderr.read() if process.stderr else ""
        if process.returncode != 0:
            lines = [line for line in (err or out).splitlines() if line.strip()]
            raise SystemExit(f"{command[2]} exited {process.returncode}: {lines[-1:]}")
        last = out.strip().splitlines()[-1]
        if impl == "mlpkit":
            run_dir = Path(last)
            metrics = json.loads((run_dir / "metrics.json").read_text())
            training = json.loads((run_dir / "run.json").read_text())["training"]
            found = {
                "seconds": float(training["seconds"]),  # includes the val sample's evaluation
                "steps": training["steps"],
                "r2": metrics["test"]["r2"],
                "threads": training["threads"],
                "notes": f"engine {training['engine']}; run.json training.seconds",
            }
        else:
            found = json.loads(last)
    return {
        "train_seconds": found["seconds"],
        "steps": found["steps"],
        "rows": rows,
        "rows_per_s": rows / found["seconds"],
        "process_seconds": wall,
        "quality_name": "r2",
        "quality": found["r2"],
        "peak_rss_mb": peak / 2**20,
        "memory": "peak PSS of the process tree",
        "threads": found["threads"],
        "notes": found["notes"],
    }


# --- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=["W1", "W2", "W3", "W4", "W5"])
    parser.add_argument("impl", choices=[*IMPLS, "prepare"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="fewer epochs/rows")
    parser.add_argument("--rows", type=int, help="W5: rows of the CSV")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args()

    if args.impl == "prepare":
        if args.workload == "W3":
            print(make_w3(W3_QUICK_ROWS if args.quick else W3_ROWS))
        if args.workload == "W5":
            for rows in [args.rows] if args.rows else W5_QUICK_ROWS if args.quick else W5_ROWS:
                print(w5_csv(rows))
        return

    threads = threads_for(args.workload, args.impl)
    if threads is not None:
        torch.set_num_threads(threads)
    line: Result = {"workload": args.workload, "impl": args.impl}
    try:
        if args.workload == "W5":
            result = run_w5(args.impl, args.rows or W5_QUICK_ROWS[0], args.seed)
        else:
            work = workload(args.workload, args.quick)
            if args.impl == "mlpkit":
                result = run_mlpkit(work)
            else:
                module = NEEDS.get(args.impl)
                if module is not None:
                    check_import(module)
                result = PEERS[args.impl](load(work), args.seed)
    except Exception as exc:
        if not args.json:
            traceback.print_exc()
        line["error"] = one_line(exc)
        print(json.dumps(line))
        sys.exit(1)
    except SystemExit as exc:
        line["error"] = str(exc.code)
        print(json.dumps(line))
        sys.exit(1)
    result["us_per_step"] = (
        result["train_seconds"] / result["steps"] * 1e6 if result.get("steps") else None
    )
    line |= result
    print(json.dumps(line))


def check_import(module: str) -> None:
    if module == "keras":
        os.environ["KERAS_BACKEND"] = "torch"
    try:
        __import__(module)
    except ImportError as exc:
        raise SystemExit(f"{module} is not installed in {sys.executable} ({exc})") from None


def one_line(exc: BaseException) -> str:
    text = traceback.format_exception_only(exc)[-1].strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


if __name__ == "__main__":
    main()
