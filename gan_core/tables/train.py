"""Training the row GAN: the D step, the G step, EMA, selection on validation, exact resume."""

from __future__ import annotations

import copy
import hashlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from gan_core import checkpoint as ckpt
from gan_core.config import TableConfig
from gan_core.fingerprint import canonical_sha256, check_resumable, code_version
from gan_core.tables.fidelity import fidelity_score, real_values
from gan_core.tables.model import Conditioner, TableDiscriminator, TableGenerator, activate
from gan_core.tables.sampling import DISCRIMINATOR, GENERATOR, MODEL_FORMAT, generate_matrix
from gan_core.tables.schema import TableError, TableSchema
from gan_core.tables.transform import TableTransformer

STATE = "state"  # the resume tensors' file, beside generator/discriminator
LOSS_EVERY = 10  # steps per averaged entry of the loss history
SELECT_SEED = 1 << 40  # seeds of the selection rows: far from generation's usual 0, 1, 2, ...


@dataclass
class TableState:
    G: TableGenerator
    G_ema: TableGenerator
    D: TableDiscriminator
    scorer: TableDiscriminator  # one row, no conditional vector: gives d_score; never trains G
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    opt_s: torch.optim.Optimizer
    rng: np.random.Generator  # conditional vectors and real-row draws
    step: int = 0
    seconds: float = 0.0
    best: dict | None = None  # {"generator", "discriminator"} state dicts of the best selected step
    best_step: int = 0
    best_score: float = float("-inf")  # the chosen step's score
    top_score: float = float("-inf")  # the highest score so far (the chosen one is within cfg.select_tolerance)
    selection: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    pending: list = field(default_factory=list)  # per-step stats not yet averaged into `losses`

    def modules(self) -> dict:
        return {"G": self.G, "G_ema": self.G_ema, "D": self.D, "scorer": self.scorer}

    def optimizers(self) -> dict:
        return {"opt_g": self.opt_g, "opt_d": self.opt_d, "opt_s": self.opt_s}


def build_state(cfg: TableConfig, cond_dim: int, width: int, seed: int, device: str) -> TableState:
    torch.manual_seed(seed)
    G = TableGenerator(cfg, cond_dim, width).to(device)
    D = TableDiscriminator(cfg, width + cond_dim, cfg.pac).to(device)
    scorer = TableDiscriminator(cfg, width, pac=1).to(device)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    adam = dict(betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    lr_d = cfg.lr_d or cfg.lr
    return TableState(G, G_ema, D, scorer, torch.optim.Adam(G.parameters(), lr=cfg.lr, **adam),
                      torch.optim.Adam(D.parameters(), lr=lr_d, **adam),
                      torch.optim.Adam(scorer.parameters(), lr=lr_d, **adam), np.random.default_rng(seed))


# --- one step ----------------------------------------------------------------------------------

@dataclass
class TrainData:
    x: torch.Tensor  # transformed training rows
    rows: np.ndarray  # training row indices grouped by (discrete column, category)
    first: np.ndarray  # [discrete column, category] -> where its group starts in `rows`
    count: np.ndarray  # [discrete column, category] -> its group's size
    conditioner: Conditioner
    transformer: TableTransformer
    batch: int  # a multiple of pac


def train_data(x: np.ndarray, conditioner: Conditioner, transformer: TableTransformer, cfg: TableConfig,
               device: str) -> TrainData:
    widest = max((s.width for s in conditioner.spans), default=0)
    first, count = np.zeros((2, len(conditioner.spans), widest), dtype=np.int64)
    groups = []
    start = 0
    for c, s in enumerate(conditioner.spans):
        codes = x[:, s.start:s.start + s.width].argmax(axis=1)
        for k in range(s.width):
            group = np.flatnonzero(codes == k)
            groups.append(group)
            first[c, k], count[c, k] = start, len(group)
            start += len(group)
    rows = np.concatenate(groups) if groups else np.zeros(0, int)
    batch = cfg.batch_size // cfg.pac * cfg.pac
    return TrainData(torch.from_numpy(x).to(device), rows, first, count, conditioner, transformer, batch)


def sample_conditions(state: TableState, data: TrainData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    device = data.x.device
    if not data.conditioner.dim:
        empty = torch.zeros(data.batch, dtype=torch.long, device=device)
        return torch.zeros(data.batch, 0, device=device), empty, empty
    cond, column, category = data.conditioner.train_batch(state.rng, data.batch)
    return (torch.from_numpy(cond).to(device), torch.from_numpy(column).to(device),
            torch.from_numpy(category).to(device))


def real_rows(state: TableState, data: TrainData, column: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
    """Training-by-sampling: per row, a real row that has the asked category of the asked column."""
    if not data.conditioner.dim:
        return data.x[torch.from_numpy(state.rng.integers(0, len(data.x), data.batch)).to(data.x.device)]
    c, k = column.cpu().numpy(), category.cpu().numpy()
    # Log-frequency never asks for a category with no training rows (its count is 0).
    index = data.rows[data.first[c, k] + (state.rng.random(len(c)) * data.count[c, k]).astype(np.int64)]
    return data.x[torch.from_numpy(index).to(data.x.device)]


def d_step(state: TableState, data: TrainData, cfg: TableConfig) -> dict[str, float]:
    """The packed discriminator and the row scorer: real rows -> 1, generated rows -> 0 (BCE with logits)."""
    cond, column, category = sample_conditions(state, data)
    perm = torch.from_numpy(state.rng.permutation(data.batch)).to(cond.device)
    real = real_rows(state, data, column[perm], category[perm])
    z = torch.randn(data.batch, cfg.embedding_dim, device=cond.device)
    with torch.no_grad():
        fake = activate(state.G(z, cond), data.transformer.spans, cfg.gumbel_tau)
    real_logit = state.D(torch.cat([real, cond[perm]], dim=1))
    fake_logit = state.D(torch.cat([fake, cond], dim=1))
    d_loss = (F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit))
              + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit)))
    stats = {"d_loss": d_loss.item()}
    state.opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    state.opt_d.step()
    rows = cfg.scorer_rows or data.batch
    s_real, s_fake = state.scorer(real[:rows]), state.scorer(fake[:rows])
    s_loss = (F.binary_cross_entropy_with_logits(s_real, torch.ones_like(s_real))
              + F.binary_cross_entropy_with_logits(s_fake, torch.zeros_like(s_fake)))
    state.opt_s.zero_grad(set_to_none=True)
    s_loss.backward()
    state.opt_s.step()
    return stats | {"score_loss": s_loss.item()}


def g_step(state: TableState, data: TrainData, cfg: TableConfig) -> dict[str, float]:
    """Generated rows -> the packed discriminator says real; plus CTGAN's conditional loss."""
    cond, column, category = sample_conditions(state, data)
    z = torch.randn(data.batch, cfg.embedding_dim, device=cond.device)
    raw = state.G(z, cond)
    fake_logit = state.D(torch.cat([activate(raw, data.transformer.spans, cfg.gumbel_tau), cond], dim=1))
    adv = F.binary_cross_entropy_with_logits(fake_logit, torch.ones_like(fake_logit))
    cond_loss = data.conditioner.loss(raw, column, category)
    state.opt_g.zero_grad(set_to_none=True)
    (adv + cfg.cond_loss_weight * cond_loss).backward()
    state.opt_g.step()
    return {"g_loss": adv.item(), "cond_loss": cond_loss.item()}


@torch.no_grad()
def update_ema(state: TableState, decay: float) -> None:
    decay = min(decay, (1 + state.step) / (10 + state.step))  # early on, follow G closely
    torch._foreach_lerp_(list(state.G_ema.parameters()), list(state.G.parameters()), 1.0 - decay)
    for ema, live in zip(state.G_ema.buffers(), state.G.buffers()):
        ema.copy_(live)


def train_step(state: TableState, data: TrainData, cfg: TableConfig) -> dict[str, float]:
    state.G.train(), state.D.train(), state.scorer.train()
    stats = d_step(state, data, cfg) | g_step(state, data, cfg)
    update_ema(state, cfg.ema_decay)
    state.step += 1
    state.pending.append(stats)
    if len(state.pending) == LOSS_EVERY:
        state.losses.append({"step": state.step} | {k: round(float(np.mean([s[k] for s in state.pending])), 5)
                                                    for k in stats})
        state.pending = []
    return stats


# --- checkpoint selection ----------------------------------------------------------------------

@dataclass
class Selector:
    """Scores the EMA generator on fixed seeds against the real validation rows (never the test rows)."""

    reference: dict[str, np.ndarray]
    seeds: np.ndarray

    def score(self, G_ema: TableGenerator, data: TrainData, cfg: TableConfig) -> dict:
        x = generate_matrix(G_ema, data.conditioner, data.transformer, cfg, self.seeds)
        conditioner = data.conditioner
        condition = None if conditioner.condition is None or not cfg.select_conditional else \
            conditioner.columns[conditioner.condition]
        return fidelity_score(data.transformer, self.reference, data.transformer.decode(x), condition)


def select(state: TableState, selector: Selector, data: TrainData, cfg: TableConfig) -> None:
    scores = {k: round(v, 5) for k, v in selector.score(state.G_ema, data, cfg).items()}
    state.selection.append({"step": state.step} | scores)
    # The latest step within select_tolerance of the best so far: a score measured on a few hundred validation
    # rows is noisy, and its maximum alone favoured early steps whose classes were less learnt.
    state.top_score = max(state.top_score, scores["score"])
    if scores["score"] >= state.top_score - cfg.select_tolerance:
        state.best_step, state.best_score = state.step, scores["score"]
        state.best = {GENERATOR: _clone(state.G_ema.state_dict()),
                      DISCRIMINATOR: {f"pack.{k}": v for k, v in _clone(state.D.state_dict()).items()}
                      | {f"score.{k}": v for k, v in _clone(state.scorer.state_dict()).items()}}


def _clone(weights: dict) -> dict:
    return {k: v.detach().clone() for k, v in weights.items()}


def _current(state: TableState) -> dict:
    return {GENERATOR: _clone(state.G_ema.state_dict()),
            DISCRIMINATOR: {f"pack.{k}": v for k, v in _clone(state.D.state_dict()).items()}
            | {f"score.{k}": v for k, v in _clone(state.scorer.state_dict()).items()}}


# --- checkpoints -------------------------------------------------------------------------------

def fingerprint(x: np.ndarray, schema: TableSchema, cfg: TableConfig, seed: int) -> dict:
    """What a resumable state was trained from: only the same training rows, schema, config, seed and code
    resume it. Sections as gan_core.fingerprint's, so that a refusal says what differs."""
    # How long to train is not part of it: a run given more steps or time continues the same run.
    knobs = cfg.model_dump(mode="json", exclude={"steps", "max_seconds", "checkpoint_every"})
    print_ = {"data": {"sha256": hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()},
              "split": {"columns": {c.name: c.kind for c in schema.columns}, "target": schema.target,
                        "condition": schema.condition},
              "table": knobs, "train": {"seed": seed}, "code": code_version("tables.train")}
    return print_ | {"id": canonical_sha256(print_)}


def _state_tensors(state: TableState) -> dict[str, torch.Tensor]:
    tensors = {f"{name}.{k}": v for name, m in state.modules().items() for k, v in m.state_dict().items()}
    for name, opt in state.optimizers().items():
        for index, entry in opt.state_dict()["state"].items():
            tensors |= {f"{name}.{index}.{key}": value for key, value in entry.items()}
    return tensors | {"torch_rng": torch.get_rng_state()}


def training_meta(state: TableState, meta: dict) -> dict:
    return meta | {"step": state.step, "seconds": round(state.seconds, 3),
                   "selection": {"best_step": state.best_step, "has_best": state.best is not None,
                                 "best_score": state.best_score if state.best is not None else None,
                                 "top_score": state.top_score if state.best is not None else None,
                                 "history": state.selection},
                   "losses": state.losses}


def save_checkpoint(checkpoint_dir: Path, state: TableState, meta: dict) -> None:
    """The resume state: the selected weights, every module and optimizer, the RNGs, swapped in together."""
    best = state.best or _current(state)
    meta = training_meta(state, meta) | {
        "numpy_rng": state.rng.bit_generator.state, "pending": state.pending,
        "opt_groups": {n: o.state_dict()["param_groups"] for n, o in state.optimizers().items()}}
    ckpt.save_checkpoint(checkpoint_dir, best | {STATE: _state_tensors(state)}, meta)


def save_model(out_dir: Path, state: TableState, meta: dict) -> None:
    """What sampling needs: generator (the selected EMA weights), discriminator (its packed D and row scorer)
    and meta.json; the resume state stays in the checkpoint folder."""
    ckpt.save_checkpoint(out_dir, state.best or _current(state), training_meta(state, meta))


def load_state(out_dir: Path, state: TableState, meta: dict) -> None:
    device = next(state.G.parameters()).device
    tensors = ckpt.load_tensors(out_dir, STATE, device)
    for name, module in state.modules().items():
        module.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(f"{name}.")})
    for name, opt in state.optimizers().items():
        entries: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith(f"{name}."):
                index, sub = key[len(name) + 1:].split(".", 1)
                entries.setdefault(int(index), {})[sub] = value
        opt.load_state_dict({"state": entries, "param_groups": meta["opt_groups"][name]})
    torch.set_rng_state(tensors["torch_rng"].cpu())
    state.rng.bit_generator.state = meta["numpy_rng"]
    state.step, state.seconds = int(meta["step"]), float(meta["seconds"])
    selection = meta["selection"]
    state.selection, state.losses, state.pending = list(selection["history"]), list(meta["losses"]), list(meta["pending"])
    if selection["has_best"]:
        state.best_step, state.best_score = selection["best_step"], selection["best_score"]
        state.top_score = selection.get("top_score", state.best_score)
        state.best = {GENERATOR: ckpt.load_tensors(out_dir, GENERATOR, device),
                      DISCRIMINATOR: ckpt.load_tensors(out_dir, DISCRIMINATOR, device)}


def resume_meta(checkpoint_dir: Path, wanted: dict) -> dict | None:
    """The checkpoint's meta when it holds this run (None when there is none); another run's is refused."""
    try:
        meta = ckpt.read_meta(checkpoint_dir)
    except ckpt.CheckpointError:
        return None
    if meta.get("format") != MODEL_FORMAT:
        raise TableError(f"{checkpoint_dir} holds no table checkpoint: delete it or rerun without --resume")
    check_resumable(checkpoint_dir, meta, wanted)
    return meta


# --- the loop ----------------------------------------------------------------------------------

def train_table_gan(train_df: pd.DataFrame, validation_df: pd.DataFrame | None, schema: TableSchema,
                    cfg: TableConfig, out_dir: Path, *, seed: int, checkpoint_dir: Path | None = None,
                    resume: bool = False, progress=None, stop_after: int | None = None, device: str = "cpu",
                    clock=time.monotonic) -> dict:
    """Fit the transformer and the GAN on TRAIN_DF; select the EMA generator on VALIDATION_DF; write
    out_dir/{generator,discriminator}.safetensors + meta.json (what sampling needs) and the resume state to
    checkpoint_dir (default: out_dir's sibling `<name>.checkpoint`). Returns the history.

    resume: continue from checkpoint_dir; a checkpoint of other data, schema, config, seed or code is refused.
    stop_after: end at this step (tests; a later resume goes on). progress: a callable (step, total, stats)
    or True for a progress bar. clock: what cfg.max_seconds is measured by (time.process_time: CPU seconds,
    which a busy machine's neighbours do not inflate).
    """
    started = clock()
    if len(train_df) == 0:
        raise TableError("train_table_gan: the training split has no rows")
    out_dir = Path(out_dir)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else out_dir.with_name(f"{out_dir.name}.checkpoint")
    transformer = TableTransformer.fit(train_df, schema, cfg.gmm_components, seed)
    conditioner = Conditioner(transformer, schema.condition)
    x = transformer.transform(train_df, seed=seed)
    state = build_state(cfg, conditioner.dim, transformer.width, seed, device)
    data = train_data(x, conditioner, transformer, cfg, device)
    print_ = fingerprint(x, schema, cfg, seed)
    meta = {"format": MODEL_FORMAT, "table": cfg.model_dump(mode="json"), "schema": schema.to_json(),
            "transformer": transformer.state(), "seed": seed, "fingerprint": print_, "train_rows": len(train_df)}
    previous = resume_meta(checkpoint_dir, print_) if resume else None
    if previous is not None:
        load_state(checkpoint_dir, state, previous)
    elif checkpoint_dir.exists():
        shutil.rmtree(checkpoint_dir)  # a fresh run: a later --resume finds only this run's state
    reference = validation_df if validation_df is not None and len(validation_df) else train_df
    selector = Selector(real_values(transformer, reference),
                        SELECT_SEED + np.arange(cfg.select_rows, dtype=np.int64))
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    report = _reporter(progress, cfg.steps, state.step)
    elapsed = state.seconds
    while state.step < end:
        if cfg.max_seconds is not None and elapsed + clock() - started >= cfg.max_seconds:
            break
        stats = train_step(state, data, cfg)
        if cfg.select_every and state.step % cfg.select_every == 0:
            select(state, selector, data, cfg)
        report(state.step, stats)
        if state.step % cfg.checkpoint_every == 0 and state.step < end:
            state.seconds = elapsed + clock() - started
            save_checkpoint(checkpoint_dir, state, meta)
    if not cfg.select_every:
        state.best, state.best_step = _current(state), state.step  # no selection: the last step
    elif not state.selection or state.selection[-1]["step"] != state.step:
        select(state, selector, data, cfg)  # the last step competes too
    state.seconds = elapsed + clock() - started
    save_checkpoint(checkpoint_dir, state, meta)  # a later run with more steps goes on from here
    save_model(out_dir, state, meta)
    report(None, {})
    return {"steps": state.step, "seconds": round(state.seconds, 3), "best_step": state.best_step,
            "best_score": state.best_score if state.best_score > float("-inf") else None,
            "selection": state.selection, "losses": state.losses}


def _reporter(progress, total: int, initial: int):
    if callable(progress):
        return lambda step, stats: step is not None and progress(step, total, stats)
    if not progress:
        return lambda step, stats: None
    from gan_core.progress import progress_bar
    bar = progress_bar(total, "train table", initial=initial)

    def report(step, stats):
        if step is None:
            bar.close()
            return
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(**{k: f"{v:.3f}" for k, v in stats.items()})
    return report
