"""The binarization test (Zimmermann, Brendel, Tramer, Carlini, 2022), batched.

Why: an attack that reports high robust accuracy may simply be too weak. This
test replaces the defended model's readout, per test sample, by a linear
classifier fitted so that a point *inside the epsilon ball* (a boundary
training point) is classified adversarial while the clean point and random
inner points are not. An adversarial example provably exists; a correct
attack must find it. The phases run for a whole chunk of samples at once:

1. sample inner and boundary points (:mod:`pytest_attacktest.engine.sampling`);
2. extract features in large batches (:mod:`pytest_attacktest.engine.features`);
3. fit one readout per sample at once (:mod:`pytest_attacktest.engine.readout`);
4. build the routed binarized model (:mod:`pytest_attacktest.engine.routing`);
5. run the attack under test on the chunk;
6. verify every returned point ourselves, never trusting the attack;
7. report per sample and per test (:mod:`pytest_attacktest.engine.report`).
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any, ParamSpec

import eagerpy as ep
import numpy as np

from attacks import backend, frameworks, seeding
from attacks import progress as attack_progress
from attacks.base import Attack, check_gradient_support, check_inputs
from attacks.geometry import atleast_kd
from attacks.keywords import keyword_hints
from attacks.losses import cross_entropy
from attacks.models import Model, as_model
from attacks.norms import norm_name
from pytest_attacktest.engine.blocks import Blocks, forward_blocks
from pytest_attacktest.engine.blocks import free_device_bytes as _free_device_bytes
from pytest_attacktest.engine.checks import (
    attack_result,
    ball_points,
    boolean_mask,
    check_affine_features,
    check_attack,
    check_labels,
    check_logits,
    forward_guard,
    private_copy,
    same_values,
)
from pytest_attacktest.engine.errors import InputError
from pytest_attacktest.engine.features import FeatureFn, feature_extractor
from pytest_attacktest.engine.forward import channels_last_inputs, reduced_precision
from pytest_attacktest.engine.modelstate import preserved
from pytest_attacktest.engine.options import DEFAULT_CLOSENESS as DEFAULT_CLOSENESS
from pytest_attacktest.engine.options import DEFAULT_GAP as DEFAULT_GAP
from pytest_attacktest.engine.options import DEFAULT_MAX_INCONCLUSIVE as DEFAULT_MAX_INCONCLUSIVE
from pytest_attacktest.engine.options import DEFAULT_MIN_CONCLUSIVE as DEFAULT_MIN_CONCLUSIVE
from pytest_attacktest.engine.options import DEFAULT_THRESHOLD as DEFAULT_THRESHOLD
from pytest_attacktest.engine.options import EngineSettings, SettingsError
from pytest_attacktest.engine.passes import (
    MAX_FEATURE_PASSES,
    MAX_ROUNDS,
    is_auto,
    needed_passes,
    next_passes,
    over_cap_reason,
)
from pytest_attacktest.engine.readout import MIN_CLOSENESS, NOISE_FACTOR, Readouts, fit_readouts
from pytest_attacktest.engine.report import MAX_EXAMPLE_VALUES, MAX_EXAMPLES, Report, SampleResult
from pytest_attacktest.engine.routing import BinarizedModel
from pytest_attacktest.engine.sampling import boundary_points, inner_points, repeat_each
from pytest_attacktest.engine.verification import admissibility

#: The settings' defaults (DEFAULT_THRESHOLD, DEFAULT_GAP, ...) are defined
#: once, in :mod:`pytest_attacktest.engine.options` with :class:`EngineSettings`, and
#: re-exported here for the callers that import them from the engine.
MAX_INNER = 999  #: the reference's usual count; capped by the feature dimension
#: Inner points per sample evaluated twice to measure forward-pass noise
#: (with the clean point and the boundary points).
NOISE_INNER = 8


UserAttack = Callable[[Any, Any, Any, float], Any]
#: ``progress(phase, done, total)``: see :func:`binarization_test`.
ProgressFn = Callable[[str, int, int], None]
_P = ParamSpec("_P")


def default_inner_points(feature_dim: int, n_boundary: int) -> int:
    """Inner points per sample, respecting the feature dimension.

    A linear readout separates n points in general position in d dimensions
    only if n <= d + 1; with more, setups fail (the reference's 999 inner
    points on 512-d ResNet features failed for every sample). Half the
    dimension leaves room for randomized defenses' repeated passes.
    """
    return int(max(1, min(MAX_INNER, feature_dim // 2 - n_boundary)))


def _keeps_model_state(test: Callable[_P, Report]) -> Callable[_P, Report]:
    """Run ``test`` with the user's torch modules and global RNGs restored afterwards.

    Why around the whole test as well as around each attack: the engine's own
    forward passes of a model left in training mode update its batch-norm
    statistics, and a later test of the session must see the model as the
    user left it. A randomized defense draws from the frameworks' global
    generators in every forward pass the engine makes (features, noise,
    verification); seeded with the test's ``seed`` (:func:`attacks.seeding.seeded`)
    those draws are the same on every run and in any test order, and the
    user's random streams continue afterwards as if the test had not run.
    """

    @functools.wraps(test)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> Report:
        seed: Any = kwargs.get("seed", 0)
        # An invalid seed is refused by the test's own checks, with their message.
        usable = isinstance(seed, int | np.integer) and not isinstance(seed, bool)
        model = args[0] if args else kwargs.get("model")
        with preserved(model), seeding.seeded(int(seed) if usable else None):
            return test(*args, **kwargs)

    return run


@_keeps_model_state
@keyword_hints
def binarization_test(
    model: Any,
    x: Any,
    y: Any = None,
    *,
    attack: Attack | UserAttack,
    epsilon: float,
    norm: str | float = EngineSettings.norm,
    features: str | FeatureFn | None = EngineSettings.features,
    n_inner: int | None = EngineSettings.n_inner,
    n_boundary: int = EngineSettings.n_boundary,
    corners: bool = EngineSettings.corners,
    gap: float = EngineSettings.gap,
    closeness: float = EngineSettings.closeness,
    rescale_logits: str | None = EngineSettings.rescale_logits,
    threshold: float = EngineSettings.threshold,
    max_inconclusive: float = EngineSettings.max_inconclusive,
    min_conclusive: int = EngineSettings.min_conclusive,
    feature_passes: int = EngineSettings.feature_passes,
    average_passes: int | str = EngineSettings.average_passes,
    verify_passes: int = EngineSettings.verify_passes,
    n_validation: int = EngineSettings.n_validation,
    valid_input: Callable[[Any], Any] | None = EngineSettings.valid_input,
    chunk_size: int | None = EngineSettings.chunk_size,
    max_batch: int | None = EngineSettings.max_batch,
    feature_dtype: str | None = EngineSettings.feature_dtype,
    seed: int = 0,
    stacklevel: int = 2,
    progress: ProgressFn | None = None,
) -> Report:
    """Run the binarization test of ``attack`` on ``model`` at the samples ``x``.

    Args:
        model: the defended model: a native model or an :class:`attacks.Model`
            (its bounds are the input domain).
        x: clean test inputs ``(S, ...)`` inside the bounds.
        y: their labels (optional; only the original model's clean accuracy
            is reported from them, the binarized task does not use them).
        attack: an :class:`attacks.Attack`, or a function
            ``fn(native_binarized_model, x, y, epsilon) -> x_adv`` for the
            user's own or a third-party attack (``y`` is all zeros: the clean
            class of the binarized model).
        epsilon: the threat model's radius (> 0).
        norm: ``"linf"``, ``"l2"``, ``"l1"`` or p.
        features: feature layer (see :func:`~pytest_attacktest.engine.features.feature_extractor`).
        n_inner: random inner points per sample (the clean point is added);
            default from the feature dimension (:func:`default_inner_points`).
        n_boundary: boundary points per sample (class 1).
        corners: Linf boundary points on the cube's corners.
        gap: inner points lie within ``(1 - gap) * epsilon``.
        closeness: decision-boundary closeness in ``[0, 1)``.
        rescale_logits: ``None`` (default), ``"fixed"`` (each readout's logits
            span 1 over its training points) or ``"adaptive"`` (they span what
            the defended model's logits span there, one extra forward pass);
            as the reference. Decisions are unchanged; only the loss scale an
            attack sees changes.
        threshold: minimum ASR over conclusive samples to pass.
        max_inconclusive: largest share of inconclusive samples for a verdict.
        min_conclusive: fewest conclusive samples for a verdict (default 10,
            :data:`DEFAULT_MIN_CONCLUSIVE`); fewer make the verdict ``error``.
        feature_passes: feature evaluations per training point, each a training
            point of its own, so the readout must classify every one correctly
            (randomized defenses with few outcomes, e.g. random shifts).
        average_passes: forward passes whose features are averaged wherever
            the engine decides (each feature evaluation of the fit, the noise,
            the guarantee, the verification, the random points): ``"auto"``
            (default) is 1 for a model whose repeated passes agree and, for a
            randomized one, as many as its measured noise needs, at most 64
            (:mod:`pytest_attacktest.engine.passes`); an integer fixes it. The attack
            still sees one pass per call.
        verify_passes: the attack's point must be adversarial in each of these
            fresh evaluations (each a mean of ``average_passes`` passes;
            randomized defenses).
        n_validation: fresh random inner and boundary points per sample for the
            validation accuracies and the random-attack check.
        valid_input: detector ``fn(x) -> bool mask``: training points it
            rejects are redrawn, and a rejected adversarial counts as a miss.
        chunk_size: samples processed together; by default sized so the chunk's
            sampled points use at most half the free device memory (CUDA) or
            1 GiB (CPU), and at most 4096 samples (:func:`auto_chunk_size`).
        max_batch: the most inputs the model is given in one forward pass
            (every pass: clean points, features, detector, and the attack's
            passes through the binarized model); ``None``: sized by memory.
            For models that refuse large batches.
        feature_dtype: ``"bfloat16"`` or ``"float16"`` extracts the training
            points' features under ``torch.autocast`` (PyTorch models; faster
            on GPUs with tensor cores); ``None`` (default): full precision.
            The attack and the verification stay in full precision, and the
            difference is measured as forward-pass noise that the readout's
            margins cover (see :mod:`pytest_attacktest.engine.forward`): it can cost
            conclusive samples, never a false pass.
        seed: makes the run reproducible.
        stacklevel: of the warnings issued at the end (the report keeps them too);
            wrappers pass a larger value so warnings point at the user's code.
        progress: optional ``fn(phase, done, total)``, called as each phase
            ("sampling", "features", "fit", "attack", "verification") starts on
            a chunk, with ``done`` the samples finished before that chunk, and
            once more as ``("done", total, total)``. For live progress of long
            runs (the plugin's ``--attack-test-progress``); ``done`` advances
            per chunk, so a smaller ``chunk_size`` gives finer progress. When
            it also has a method ``attack_steps(step, steps, end)``, our
            attacks call it during "attack" with their steps done so far
            (:mod:`attacks.progress`; ``end``: the samples done once this
            chunk is). It only observes: results are the same with or without it.

    Raises:
        ValueError: bad epsilon, norm, sizes or inputs; FeatureError when no
            feature layer is usable (with how to pass one).
    """
    config = EngineSettings(
        epsilon=epsilon,
        norm=norm,
        threshold=threshold,
        features=features,
        n_inner=n_inner,
        n_boundary=n_boundary,
        corners=corners,
        gap=gap,
        closeness=closeness,
        rescale_logits=rescale_logits,
        max_inconclusive=max_inconclusive,
        min_conclusive=min_conclusive,
        feature_passes=feature_passes,
        average_passes=average_passes,
        verify_passes=verify_passes,
        n_validation=n_validation,
        valid_input=valid_input,
        chunk_size=chunk_size,
        max_batch=max_batch,
        feature_dtype=feature_dtype,
    )
    epsilon, p, max_batch = config.epsilon, config.p, config.max_batch
    check_attack(attack)
    wrapped = as_model(model)
    x_, _ = wrapped.adopt(x)
    check_inputs(x_, wrapped, "put normalisation inside the model and pass inputs in the bounds")
    _check_epsilon_scale(epsilon, p, wrapped, x_)
    x_ = private_copy(x_)  # the engine's own clean points: nothing the user runs can move them
    blocks = forward_blocks(x_, _itemsize(x_), max_batch)
    classes, clean_logits = _clean_logits(wrapped, x_, blocks, max_batch)
    if isinstance(attack, Attack) and not math.isclose(attack.p, p):
        raise SettingsError(
            f"the attack's norm ({attack.norm}) differs from the test's ({norm_name(p)}): "
            "a test at one norm says nothing about an attack at another"
        )
    if isinstance(attack, Attack):
        check_gradient_support(attack, wrapped)
    # Two inputs find the feature layer (batch norm in training mode needs two),
    # small enough not to run out of memory outside the halving blocks.
    probe = x_[: min(2, max_batch or 2)].raw
    extractor = channels_last_inputs(
        wrapped, forward_guard(feature_extractor(wrapped, features, probe=probe), max_batch)
    )
    fast_extractor = reduced_precision(wrapped, extractor, config.feature_dtype)
    name = repr(attack) if isinstance(attack, Attack) else getattr(attack, "__name__", repr(attack))
    settings = config.report_settings()
    report = Report(
        attack=name,
        norm=norm_name(p),
        epsilon=float(epsilon),
        threshold=config.threshold,
        max_inconclusive=config.max_inconclusive,
        seed=seed,
        settings=settings,
        min_conclusive=config.min_conclusive,
    )
    if callable(config.features):  # the automatic finder's features are a Linear's input already
        bounds = (wrapped.bounds.lower, wrapped.bounds.upper)
        residual, unchecked = check_affine_features(
            wrapped.logits,
            extractor,
            lambda m: ball_points(x_, m, float(epsilon), p, bounds, seed),
            blocks,
            x_[:1],
            seed,
        )
        settings["features_residual"] = residual
        if unchecked:
            report.warnings.append(unchecked)
    if y is not None:
        labels = check_labels(y, int(x_.shape[0]), classes)
        settings["clean_accuracy"] = float((clean_logits.argmax(axis=1) == labels).mean())
    engine = _Engine(
        wrapped,
        (extractor, fast_extractor),
        attack,
        config,
        report,
        seed,
        blocks,
        x_,
        progress,
    )
    chunk_size = config.chunk_size
    if chunk_size is None:  # averaged passes are summed one at a time: no memory for them
        points = 1 + engine.n_inner + config.n_boundary + 2 * config.n_validation
        chunk_size = auto_chunk_size(x_, points * config.feature_passes)
    settings["chunk_size"] = chunk_size
    for start in range(0, x_.shape[0], chunk_size):
        engine.run_chunk(x_[start : start + chunk_size], start)
    settings["n_inner"] = engine.n_inner
    settings["average_passes_used"] = engine.passes_used
    settings["randomized"] = engine.randomized  # None: not probed (average_passes fixed)
    settings["forward_block"] = engine.blocks.size
    # With timings["features"]: the features phase's speed, next to the model's own.
    settings["feature_inputs"] = engine.feature_points
    settings.update(_noise_settings(report))
    halvings = engine.blocks.halvings + engine.attack_blocks.halvings
    if halvings:
        # Stated, not warned: results do not depend on it, but time and memory do.
        settings["attack_batch"] = min(engine.attack_blocks.size, chunk_size)
        settings["out_of_memory_retries"] = halvings
    if progress is not None:
        progress("done", engine.total, engine.total)
    for warning in report.warnings:  # + 2: the frames of _keeps_model_state and keyword_hints
        warnings.warn(warning, stacklevel=stacklevel + 2)
    return report


def _clean_logits(
    model: Model, x: ep.Tensor, blocks: Blocks, max_batch: int | None
) -> tuple[int, np.ndarray]:
    """The model's logits of the clean points, checked: (classes, logits on the host).

    The first forward pass of a test: a framework error here (dtype, device,
    batch norm in training mode) is translated into the fix, the output's
    shape and finiteness are checked, and a model that writes into its input
    is refused (its own later passes would move the points under test).
    """
    forward = forward_guard(lambda raw: model.logits(backend.wrap(raw)).raw, max_batch)
    before = private_copy(x)
    with backend.no_grad(x):
        logits = blocks.concatenate(lambda block: backend.wrap(forward(block.raw)), x)
    if not same_values(before, x):
        raise InputError(
            "the model modifies its input in place: clone it inside the model's forward "
            "(x = x.clone()) so that the points under test stay where they are"
        )
    classes = check_logits(logits, int(x.shape[0]))
    return classes, np.asarray(backend.to_numpy(logits))


#: Host memory a chunk's sampled points may take when no GPU tells us more.
CPU_CHUNK_BYTES = 2**30
MAX_CHUNK = 4096


def auto_chunk_size(x: ep.Tensor, points_per_sample: int) -> int:
    """Samples per chunk so that the chunk's points fit comfortably in memory.

    Each sample carries ``points_per_sample`` inputs (training and validation
    points, per feature pass); with temporaries about three copies are alive.
    The budget is half of the free device memory where the framework tells it
    (PyTorch on CUDA; JAX on an accelerator, from its allocator's limit and
    use), elsewhere 1 GiB: a 1 GiB budget on a GPU would make a chunk of
    224x224 images a single sample and lose the batching.
    """
    itemsize = _itemsize(x)
    per_sample = 3 * points_per_sample * math.prod(x.shape[1:]) * itemsize
    free = _free_device_bytes(x)
    budget = CPU_CHUNK_BYTES if free is None else free // 2
    return int(max(1, min(MAX_CHUNK, x.shape[0], budget // max(1, per_sample))))


class _Engine:
    """State shared by the chunks of one test (timings, RNG, resolved sizes)."""

    def __init__(
        self,
        model: Model,
        extractors: tuple[FeatureFn, FeatureFn],
        attack: Attack | UserAttack,
        settings: EngineSettings,
        report: Report,
        seed: int,
        blocks: Blocks,
        x: ep.Tensor,
        progress: ProgressFn | None,
    ) -> None:
        """``extractors``: the features' and the training points' (reduced precision
        when asked); ``x``: the test's clean points (their count is the progress's
        total, and the first sizes the default ``n_inner``)."""
        self.model = model
        self.extractor, self.fast_extractor = extractors
        #: Inputs the training points' feature extraction passed through the model.
        self.feature_points = 0
        self.attack = attack
        self.settings = settings
        self.p = settings.p
        self.epsilon = float(settings.epsilon)
        self.report = report
        self.seed = seed
        self.valid_input = settings.valid_input
        self.progress = progress
        self.total = int(x.shape[0])
        #: Passes averaged wherever the engine decides (:mod:`pytest_attacktest.engine.passes`):
        #: the current chunk's; ``"auto"`` starts at 1 and each chunk at the last's.
        self.passes = 1
        self.passes_used = 1
        #: Whether two passes over the same batch differ (probed once per test).
        self.randomized: bool | None = None
        #: Per sample of the current chunk, the passes its noise needs (auto, randomized).
        self.needed: np.ndarray | None = None
        #: Forward passes over many points (features, validation, detector).
        self.blocks = blocks
        #: The attack's batch: the whole chunk until that runs out of memory.
        self.attack_blocks = Blocks(sys.maxsize)
        for phase in ("sampling", "features", "fit", "attack", "verification"):
            report.timings[phase] = 0.0
        n_inner = settings.n_inner
        if n_inner is None:
            n_inner = default_inner_points(self.features(x[:1]).shape[-1], settings.n_boundary)
        #: Inner points per sample: the setting, or sized by the feature dimension.
        self.n_inner: int = n_inner

    def _phase(self, phase: str, done: int) -> None:
        """Tell the progress callback, if any, that ``phase`` starts."""
        if self.progress is not None:
            self.progress(phase, done, self.total)

    def _attack_progress(self, end: int) -> contextlib.AbstractContextManager[None]:
        """Our attacks' steps go to the progress callback's ``attack_steps``, if it has one."""
        steps = getattr(self.progress, "attack_steps", None)
        if steps is None:
            return contextlib.nullcontext()
        return attack_progress.reporting(lambda done, total: steps(done, total, end))

    def _timed(self, phase: str, start: float) -> float:
        now = time.perf_counter()
        self.report.timings[phase] += now - start
        return now

    def features(
        self, points: ep.Tensor, passes: int = 1, blocks: Blocks | None = None, fast: bool = False
    ) -> ep.Tensor:
        """Features of ``(M, ...)`` points, ``passes`` times: ``(passes, M, d)``.

        In the test's forward blocks, or in ``blocks`` (another block size);
        ``fast``: with the training points' extractor (``feature_dtype``).
        """
        blocks = self.blocks if blocks is None else blocks
        extractor = self.fast_extractor if fast else self.extractor

        def extract(block: ep.Tensor) -> ep.Tensor:
            return backend.wrap(extractor(block.raw))

        with backend.no_grad(points):
            out = [blocks.concatenate(extract, points) for _ in range(passes)]
        return ep.stack(out, axis=0)

    def mean_features(
        self, points: ep.Tensor, passes: int, blocks: Blocks | None = None, fast: bool = False
    ) -> ep.Tensor:
        """Features of ``(M, ...)`` points averaged over ``passes`` passes: ``(M, d)``.

        One pass at a time, so memory does not grow with the passes; one pass
        is returned as extracted (bit for bit what a deterministic model gives).
        ``fast`` as for :meth:`features`.
        """
        total = self.features(points, 1, blocks, fast)[0]
        for _ in range(passes - 1):
            total = total + self.features(points, 1, blocks, fast)[0]
        return total if passes == 1 else total / passes

    def _probe_randomness(self, x: ep.Tensor) -> bool:
        """Whether the model's features differ between two passes over the same batch.

        Numerical noise (TF32, batch-size-dependent algorithms) repeats in the
        same batch composition; a randomized defense does not. Only then do
        more averaged passes help, so only then does ``"auto"`` average.
        """
        if self.randomized is None:
            first, second = self.features(x, 2)
            self.randomized = not same_values(first, second)
        return self.randomized

    def run_chunk(self, x: ep.Tensor, offset: int) -> None:
        opts = self.settings
        s = x.shape[0]
        random = backend.RandomSource(self.seed + offset, x)
        bounds = (self.model.bounds.lower, self.model.bounds.upper)
        eps = ep.ones(x, (s,)) * self.epsilon
        self._phase("sampling", offset)
        t = time.perf_counter()

        n_in, n_b = self.n_inner, opts.n_boundary
        inner = inner_points(x, n_in, eps, self.p, bounds, random, 1 - opts.gap)
        boundary = boundary_points(x, n_b, eps, self.p, bounds, random, opts.corners)
        invalid_setup = self._redraw_invalid(x, inner, boundary, eps, random, bounds)
        inner, boundary, rejected_training = invalid_setup
        train = ep.concatenate([x.expand_dims(1), inner, boundary], axis=1)  # (S, n, ...)
        # The concatenation copied them: keep one copy alive through the chunk.
        boundary = train[:, 1 + n_in :]
        del inner
        labels = np.array([0] * (1 + n_in) + [1] * n_b)
        self._phase("features", offset)
        t = self._timed("sampling", t)

        readouts, t = self._fit_averaged(train, labels, n_b, offset, t)
        binarized = BinarizedModel(self.model, self.extractor, x, eps, self.p, readouts)
        guaranteed = self._guarantee(binarized, x, boundary, readouts)
        self._phase("attack", offset)
        t = self._timed("fit", t)

        clean_ok, boundary_ok = guaranteed
        if (readouts.robust & clean_ok & boundary_ok & ~rejected_training).any():
            with self._attack_progress(offset + s):
                x_adv = self._run_attack(binarized, x, _zeros_labels(x), eps)
        else:  # every sample is inconclusive already: the attack could decide nothing
            x_adv = x
            self.report.warnings.append(
                f"no sample of {offset}..{offset + s - 1} could be set up: the attack was not run "
                "on them (see the inconclusive reasons)"
            )
        self._phase("verification", offset)
        t = self._timed("attack", t)
        if offset == 0:
            self.report.examples = _examples(x, x_adv, bounds)

        self._verify(binarized, x, x_adv, eps, readouts, guaranteed, rejected_training, random)
        self._timed("verification", t)
        for i in range(s):
            self.report.samples[-s + i].index = offset + i

    def _fit_averaged(
        self, train: ep.Tensor, labels: np.ndarray, n_b: int, offset: int, t: float
    ) -> tuple[Readouts, float]:
        """Features averaged over the passes, noise, readouts; more passes while too noisy.

        With ``average_passes="auto"`` on a randomized model, samples whose
        readout is not robust to the measured noise ask for more passes
        (:func:`~pytest_attacktest.engine.passes.needed_passes`), and the chunk is
        extracted and fitted again with them (at most ``MAX_ROUNDS`` times, up
        to ``MAX_FEATURE_PASSES``); the noise is measured again at every round,
        never extrapolated. Sets ``self.needed``, the passes each sample would
        need, where the cap was reached (else None: the generic noise reason).
        ``feature_passes`` evaluations per training point, each such a mean,
        are pooled as training points of their own.
        """
        opts = self.settings
        s, n = train.shape[0], train.shape[1]
        flat = train.reshape((s * n, *tuple(train.shape[2:])))
        auto = is_auto(opts.average_passes)
        k = self.passes if auto else int(opts.average_passes)
        pooled = opts.feature_passes
        labels = np.tile(labels, pooled)
        adaptive = auto and self._probe_randomness(train[:, 0])
        logit_range = self._logit_range(train)
        needed: np.ndarray | None = None
        for round_ in range(MAX_ROUNDS + 1):
            # (S, pooled * n, d): each sample's training points, once per pooled evaluation.
            evaluations = [self.mean_features(flat, k, fast=True) for _ in range(pooled)]
            feats = ep.stack(evaluations, axis=0)
            del evaluations
            self.feature_points += pooled * k * s * n
            d = feats.shape[-1]
            feats = feats.reshape((pooled, s, n, d)).transpose((1, 0, 2, 3))
            feats = feats.reshape((s, pooled * n, d))
            if round_ == 0 and pooled * n > d + 1:
                self.report.warnings.append(
                    f"{pooled * n} training points per sample for {d} feature dimensions: a "
                    "linear readout rarely separates more points than dimensions, expect "
                    "inconclusive samples"
                )
            if round_ == 0:
                self._phase("fit", offset)
            t = self._timed("features", t)
            noise = self._feature_noise(train, feats, n_b, k)
            readouts = fit_readouts(feats, labels, opts.closeness, logit_range, noise)
            del noise, feats
            t = self._timed("fit", t)
            if not adaptive:
                break
            needed = needed_passes(k, readouts.noise)
            noisy = readouts.fitted & ~readouts.robust
            more = next_passes(k, needed[noisy])
            if more == k or round_ == MAX_ROUNDS:
                break
            k = more
        self.passes = k
        self.passes_used = max(self.passes_used, k)
        self.needed = needed if k >= MAX_FEATURE_PASSES else None
        return readouts, t

    def _feature_noise(
        self, train: ep.Tensor, feats: ep.Tensor, n_b: int, passes: int = 1
    ) -> ep.Tensor:
        """Fresh features minus fitted ones for some training points: ``(S, m, d)``.

        The clean point, the boundary points and the first ``NOISE_INNER``
        inner points of every sample are evaluated again in another batch
        composition (point-major instead of sample-major) and another block
        size, as the attack and the verification will evaluate them. On a GPU
        that moves the features (convolution algorithms chosen by batch size,
        TF32, reduced precision); a randomized defense moves them by its
        randomness. The readout fit keeps its margins above what this shows.
        Both sides are means of ``passes`` passes, as every later evaluation is.
        """
        s, n = train.shape[0], train.shape[1]
        k = min(NOISE_INNER, n - 1 - n_b)
        picked = ep.concatenate([train[:, : 1 + k], train[:, n - n_b :]], axis=1)
        m = picked.shape[1]
        point_major = picked.transpose((1, 0, *range(2, picked.ndim)))
        flat = point_major.reshape((m * s, *tuple(train.shape[2:])))
        other = Blocks(max(1, min(self.blocks.size, m * s) // 2))
        fresh = self.mean_features(flat, passes, other)
        d = fresh.shape[-1]
        fresh = fresh.reshape((m, s, d)).transpose((1, 0, 2))
        fitted = ep.concatenate([feats[:, : 1 + k], feats[:, n - n_b : n]], axis=1)
        return fresh.astype(fitted.dtype) - fitted

    def _logit_range(self, train: ep.Tensor) -> ep.Tensor | None:
        """Per sample, the target span of the readout's logits (None: no rescaling)."""
        mode = self.settings.rescale_logits
        s = train.shape[0]
        if mode is None:
            return None
        if mode == "fixed":
            return ep.ones(train, (s,))
        flat = train.reshape((-1, *tuple(train.shape[2:])))
        with backend.no_grad(train):
            logits = self.blocks.concatenate(self.model.logits, flat).reshape((s, -1))
        return logits.max(axis=1) - logits.min(axis=1)

    def _redraw_invalid(
        self,
        x: ep.Tensor,
        inner: ep.Tensor,
        boundary: ep.Tensor,
        eps: ep.Tensor,
        random: backend.RandomSource,
        bounds: tuple[float, float],
    ) -> tuple[ep.Tensor, ep.Tensor, np.ndarray]:
        """Redraw training points the detector rejects (10 rounds); flag samples still invalid."""
        s = x.shape[0]
        failed = np.zeros(s, dtype=bool)
        if self.valid_input is None:
            return inner, boundary, failed
        opts = self.settings
        for kind in ("inner", "boundary"):
            points = inner if kind == "inner" else boundary
            k = points.shape[1]
            for _ in range(10):
                flat = points.reshape((s * k, *tuple(x.shape[1:])))
                ok = self._valid(flat).reshape((s, k))
                if backend.to_numpy(ok).all():
                    break
                if kind == "inner":
                    fresh = inner_points(x, k, eps, self.p, bounds, random, 1 - opts.gap)
                else:
                    fresh = boundary_points(x, k, eps, self.p, bounds, random, opts.corners)
                points = ep.where(atleast_kd(ok, points.ndim), points, fresh)
            ok_np = backend.to_numpy(self._valid(points.reshape((s * k, *tuple(x.shape[1:])))))
            failed |= ~ok_np.reshape(s, k).all(axis=1)
            if kind == "inner":
                inner = points
            else:
                boundary = points
        return inner, boundary, failed

    def _valid(self, points: ep.Tensor) -> ep.Tensor:
        """The detector's mask for ``points``, asked in memory-sized blocks."""
        return self.blocks.concatenate(self._valid_block, points)

    def _valid_block(self, points: ep.Tensor) -> ep.Tensor:
        assert self.valid_input is not None
        return boolean_mask(self.valid_input(points.raw), points.shape[0], like=points)

    def _guarantee(
        self, binarized: BinarizedModel, x: ep.Tensor, boundary: ep.Tensor, readouts: Readouts
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per sample: the clean point is class 0, the best boundary point class 1.

        Evaluated in fresh forward passes of the model the attack will see
        (float32, after the closeness shift, in another batch composition
        than the fit), in every one of ``verify_passes``, each on features
        averaged over the chunk's passes (:mod:`pytest_attacktest.engine.passes`).
        """
        s = x.shape[0]
        index = ep.arange(x, s).astype(_index_dtype(x))
        clean_ok = np.ones(s, dtype=bool)
        boundary_ok = np.ones(s, dtype=bool)
        with backend.no_grad(x):
            for _ in range(self.settings.verify_passes):
                clean_z = self._blocked_logit(binarized, x, index)
                z_b = np.stack(
                    [
                        self._blocked_logit(binarized, boundary[:, j], index)
                        for j in range(boundary.shape[1])
                    ],
                    axis=1,
                )
                clean_ok &= clean_z < 0
                boundary_ok &= z_b.max(axis=1) > 0
        best = z_b.argmax(axis=1)
        binarized.guaranteed = ep.stack([boundary[i, int(best[i])] for i in range(s)], axis=0)
        return clean_ok, boundary_ok

    def _run_attack(
        self, binarized: BinarizedModel, x: ep.Tensor, zeros: ep.Tensor, eps: ep.Tensor
    ) -> ep.Tensor:
        """The attack on the whole chunk, or on parts of it when that runs out of memory.

        The binarized model routes any subset of the chunk's samples to their
        own readouts, so a part is attacked exactly as it would be in the whole
        (random draws differ, as with any other batch split).
        """
        with seeding.seeded(self.seed if seeding.draws_from_global_rngs(self.attack) else None):
            return self.attack_blocks.gather(
                lambda i, j: self._attack_part(binarized, x[i:j], zeros[i:j]), x.shape[0]
            )

    def _attack_part(self, binarized: BinarizedModel, x: ep.Tensor, zeros: ep.Tensor) -> ep.Tensor:
        # The attack gets its own copy: one that writes into its input must not
        # move the clean points distances are measured from (nor the user's data).
        given = private_copy(x)
        try:
            with preserved(self.model):  # the user's module as it was, whatever the attack did
                return self._attack_copy(binarized, given, zeros)
        finally:
            if not same_values(given, x):
                self._warn_once(
                    f"the attack {self.report.attack} modified its input (the clean points) in "
                    "place; distances are measured from the engine's own copy of the clean "
                    "points, but the attack should work on a copy (x = x.clone())"
                )

    def _warn_once(self, message: str) -> None:
        if message not in self.report.warnings:
            self.report.warnings.append(message)

    def _attack_copy(self, binarized: BinarizedModel, x: ep.Tensor, zeros: ep.Tensor) -> ep.Tensor:
        if isinstance(self.attack, Attack):
            return backend.wrap(self.attack(binarized, x.raw, zeros.raw, epsilon=self.epsilon))
        native = binarized.as_native()
        out = self.attack(native, x.raw, zeros.raw, self.epsilon)
        return attack_result(out, x, f"the attack function {self.report.attack}")

    def _verify(
        self,
        binarized: BinarizedModel,
        x: ep.Tensor,
        x_adv: ep.Tensor,
        eps: ep.Tensor,
        readouts: Readouts,
        guaranteed: tuple[np.ndarray, np.ndarray],
        rejected_training: np.ndarray,
        random: backend.RandomSource,
    ) -> None:
        """Check every returned point ourselves and fill the per-sample results."""
        s = x.shape[0]
        index = ep.arange(x, s).astype(_index_dtype(x))
        checked = admissibility(x, x_adv, self.p, self.epsilon, self.model.bounds)
        distance, outside_ball, outside_bounds = (
            checked.distance,
            checked.outside_ball,
            checked.outside_bounds,
        )
        moved = checked.moved
        adversarial = np.ones(s, dtype=bool)
        z_adv = np.full(s, np.inf)
        with backend.no_grad(x):
            for _ in range(self.settings.verify_passes):
                z = self._blocked_logit(binarized, x_adv, index).astype(np.float64)
                adversarial &= z > 0
                z_adv = np.minimum(z_adv, z)
            rejected = np.zeros(s, dtype=bool)
            if self.valid_input is not None:
                rejected = ~backend.to_numpy(self._valid(x_adv)).astype(bool)
            inner_acc, boundary_acc, random_hit = self._validation(binarized, x, eps, random)
        success = adversarial & checked.inside & ~rejected
        reasons = [
            _setup_failure(i, readouts, guaranteed, rejected_training, self.needed)
            for i in range(s)
        ]
        missed = np.array([not r for r in reasons]) & ~success
        z_clean, clean_grad = self._diagnose(binarized, x, index, bool(missed.any()))
        if outside_ball.any():
            self.report.warnings.append(
                f"the attack returned {int(outside_ball.sum())} points outside the "
                f"{norm_name(self.p)} ball of radius {self.epsilon:g}: they get no credit"
            )
        if outside_bounds.any():
            self.report.warnings.append(
                f"the attack returned {int(outside_bounds.sum())} points outside the bounds "
                f"{tuple(self.model.bounds)}: they get no credit"
            )
        for i, reason in enumerate(reasons):
            self.report.samples.append(
                SampleResult(
                    index=i,
                    conclusive=not reason,
                    reason=reason,
                    success=bool(success[i]) and not reason,
                    distance=float(distance[i]),
                    logit_difference=float(z_adv[i] - readouts.boundary_logit[i]),
                    inner_accuracy=float(inner_acc[i]),
                    boundary_accuracy=float(boundary_acc[i]),
                    random_success=bool(random_hit[i]),
                    outside_ball=bool(outside_ball[i]),
                    outside_bounds=bool(outside_bounds[i]),
                    rejected=bool(rejected[i]),
                    train_margin=float(readouts.train_margin[i]),
                    noise=float(readouts.noise[i]),
                    closeness=float(readouts.closeness[i]),
                    moved=bool(moved[i]),
                    logit_gain=float(z_adv[i] - z_clean[i]),
                    clean_grad=clean_grad[i] if missed[i] else "",
                )
            )

    def _diagnose(
        self, binarized: BinarizedModel, x: ep.Tensor, index: ep.Tensor, missed: bool
    ) -> tuple[np.ndarray, list[str]]:
        """What a failure's diagnosis needs: the clean points' readout logits, and the gradients.

        Under the global RNGs seeded and restored (:func:`attacks.seeding.seeded`),
        so that a randomized defense's later forward passes draw as they would
        have without these passes: a diagnostic must never change a result.
        The gradients only when some sample was missed (:meth:`_clean_gradients`).
        """
        with seeding.seeded(self.seed):
            with backend.no_grad(x):
                z_clean = self._blocked_logit(binarized, x, index).astype(np.float64)
            grads = self._clean_gradients(binarized, x, index) if missed else [""] * x.shape[0]
        return z_clean, grads

    def _clean_gradients(
        self, binarized: BinarizedModel, x: ep.Tensor, index: ep.Tensor
    ) -> list[str]:
        """Per sample, the input gradient of its readout logit at the clean point.

        See :attr:`SampleResult.clean_grad`. One gradient per sample, in the
        attack's batch; ``""`` everywhere when the model has no gradients, the
        attack uses none, or the framework fails: a diagnostic must never cost
        a verdict.
        """
        s = x.shape[0]
        uses_gradient = not isinstance(self.attack, Attack) or self.attack.uses_gradient
        if not (self.model.differentiable and uses_gradient):
            return [""] * s

        def size(loss: Callable[[ep.Tensor], ep.Tensor], i: int, j: int) -> np.ndarray:
            def fn(t: ep.Tensor) -> tuple[ep.Tensor, ep.Tensor]:
                z = binarized.readout_logit(t, index[i:j])
                return loss(z).sum(), z

            if backend.tensor_framework(x) == "jax":  # eager: no compilation for one gradient
                from attacks.jaxjit import eager_value_and_grad

                _, _, grad = eager_value_and_grad(fn, x[i:j])
            else:
                _, _, grad = backend.value_and_grad(fn, x[i:j])
            # A sum: NaN and inf reach it in every framework (a max may drop NaN).
            return np.asarray(backend.to_numpy(grad.flatten(start=1).abs().sum(axis=1)))

        def logit(z: ep.Tensor) -> ep.Tensor:
            return z

        def ce(z: ep.Tensor) -> ep.Tensor:  # what a cross-entropy attack differentiates
            return cross_entropy(ep.stack([-z, z], axis=1), _zeros_labels(z))

        def block(i: int, j: int) -> np.ndarray:
            return np.stack([size(logit, i, j), size(ce, i, j)], axis=1)

        try:
            with preserved(self.model):
                sizes = np.concatenate(self.attack_blocks.run(block, s)).astype(np.float64)
        except Exception:  # diagnostic only: never fail a test over it
            return [""] * s
        return [_gradient_state(g, g_ce) for g, g_ce in sizes]

    def _blocked_logit(
        self, binarized: BinarizedModel, points: ep.Tensor, index: ep.Tensor
    ) -> np.ndarray:
        """Readout logits of many points (``index``: their samples), in memory-sized blocks.

        On features averaged over the chunk's passes (:mod:`pytest_attacktest.engine.passes`):
        every decision the engine takes uses the same averaged readout.
        """
        if self.passes > 1:
            with backend.no_grad(points):
                mean = self.mean_features(points, self.passes)
                return np.asarray(backend.to_numpy(binarized.readouts.logits(mean, index)))
        parts = self.blocks.run(
            lambda i, j: backend.to_numpy(binarized.readout_logit(points[i:j], index[i:j])),
            points.shape[0],
        )
        return np.concatenate(parts)

    def _validation(
        self, binarized: BinarizedModel, x: ep.Tensor, eps: ep.Tensor, random: backend.RandomSource
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fresh random points: inner anywhere in the ball, boundary on the sphere.

        A random point counts as adversarial under the verification's criterion
        (every one of ``verify_passes`` evaluations on averaged features), so
        the random-success check runs under the same randomness as the attack's.
        """
        k = self.settings.n_validation
        s = x.shape[0]
        if k <= 0:
            nan = np.full(s, np.nan)
            return nan, nan, np.zeros(s, dtype=bool)
        bounds = (self.model.bounds.lower, self.model.bounds.upper)
        inner = inner_points(x, k, eps, self.p, bounds, random, 1.0)
        boundary = boundary_points(x, k, eps, self.p, bounds, random, self.settings.corners)
        # All validation points of the chunk in one batch: (S * k, ...), sample-major.
        index = repeat_each(ep.arange(x, s).astype(_index_dtype(x)), k)
        shape = tuple(x.shape[1:])
        # Judged as the attack's points are: adversarial in every one of the
        # verification's evaluations (one suffices for a model probed deterministic).
        z_in = np.full((s, k), np.inf)
        z_b = np.full((s, k), np.inf)
        for _ in range(1 if self.randomized is False else self.settings.verify_passes):
            z = self._blocked_logit(binarized, inner.reshape((s * k, *shape)), index)
            z_in = np.minimum(z_in, z.reshape(s, k))
            z = self._blocked_logit(binarized, boundary.reshape((s * k, *shape)), index)
            z_b = np.minimum(z_b, z.reshape(s, k))
        inner_acc = (z_in <= 0).mean(axis=1)
        boundary_acc = (z_b > 0).mean(axis=1)
        random_hit = np.asarray((z_in > 0).any(axis=1) | (z_b > 0).any(axis=1))
        return np.asarray(inner_acc), np.asarray(boundary_acc), random_hit


# ---------------------------------------------------------------------- helpers


def _check_epsilon_scale(epsilon: float, p: float, model: Model, x: ep.Tensor) -> None:
    """Refuse an epsilon whose ball holds the whole input domain.

    Why: ``epsilon=8`` for pixel values in [0, 1] (meant: 8/255) runs, every
    point of the domain is then in the ball, and the verdict blames the
    attack. The largest distance inside the bounds is the domain's width in
    Linf and ``width * D**(1/p)`` in Lp.
    """
    lo, hi = float(model.bounds.lower), float(model.bounds.upper)
    dim = math.prod(int(d) for d in x.shape[1:])
    largest = (hi - lo) * (1.0 if math.isinf(p) else dim ** (1.0 / p))
    if epsilon >= largest:
        raise SettingsError(
            f"epsilon={epsilon:g} is at least the largest {norm_name(p)} distance between two "
            f"inputs in the bounds ({lo:g}, {hi:g}) ({largest:g}): every input would be in every "
            "ball. Is epsilon on the inputs' scale (8/255 for pixel values in [0, 1])? Inputs in "
            "another range need their bounds: attacks.Model(model, bounds=(low, high)), e.g. "
            "bounds=(-1, 1)"
        )


def _noise_settings(report: Report) -> dict[str, Any]:
    """What the report states about forward-pass noise and the margins it allowed."""
    noise = np.array([r.noise for r in report.samples], dtype=np.float64)
    applied = np.array([r.closeness for r in report.samples], dtype=np.float64)
    finite = np.isfinite(noise)
    if not finite.any():
        return {}
    return {
        "noise_margin_factor": NOISE_FACTOR,
        "forward_noise_median": float(np.median(noise[finite])),
        "forward_noise_max": float(noise[finite].max()),
        "closeness_applied_min": float(np.nanmin(applied)),
        "closeness_applied_median": float(np.nanmedian(applied)),
    }


def _setup_failure(
    i: int,
    readouts: Readouts,
    guaranteed: tuple[np.ndarray, np.ndarray],
    rejected_training: np.ndarray,
    needed: np.ndarray | None = None,
) -> str:
    """Why sample ``i`` could not be set up, and what the user can change ("" when it could).

    The texts are the same for every sample (the report groups them); the
    sample's own figures are in its ``noise`` and ``closeness`` fields.
    """
    noise = (
        "fresh forward passes in other batch compositions move the readout logits (the "
        "sample's noise; TF32, autocast or cuDNN algorithm choice on a GPU, or the defense's "
        "randomness)"
    )
    float32 = "run the test's forward passes in float32 (TF32 and autocast off)"
    clean_ok, boundary_ok = guaranteed
    if rejected_training[i]:
        return "the detector (valid_input) rejected the training points in 10 redraws"
    if not readouts.fitted[i]:
        return (
            "the linear readout could not separate the inner from the boundary points "
            "(see train_margin); fewer inner points (n_inner) or a richer feature layer help"
        )
    if not readouts.robust[i] and needed is not None and needed[i] > MAX_FEATURE_PASSES:
        return over_cap_reason(int(needed[i]))
    if not readouts.robust[i]:
        return (
            f"forward-pass noise: {noise}, and a margin of {NOISE_FACTOR:g} times that at the "
            f"clean and the guaranteed point leaves a closeness below {MIN_CLOSENESS:g}, where "
            f"random points would hit the adversarial region; {float32}"
        )
    if not clean_ok[i]:
        return (
            f"the clean point is classified adversarial in a fresh forward pass: {noise}; {float32}"
        )
    if not boundary_ok[i]:
        return (
            "the guaranteed adversarial is not adversarial in a fresh forward pass: "
            f"{noise}; {float32}"
        )
    return ""


def _gradient_state(logit: float, ce: float) -> str:
    """:attr:`SampleResult.clean_grad` from the sizes of the two gradients at a clean point."""
    if not np.isfinite(logit):
        return "non-finite"
    if logit == 0:
        return "zero"
    return "saturated" if ce == 0 or not np.isfinite(ce) else "ok"


def _itemsize(x: ep.Tensor) -> int:
    """Bytes per element of ``x`` (float64 or float32 in practice)."""
    return 8 if "64" in str(x.dtype) else 4


def _index_dtype(x: ep.Tensor) -> Any:
    """Sample indices: int64 where the framework computes in it (JAX needs x64 for that)."""
    return frameworks.of(x).index_dtype()


def _examples(x: ep.Tensor, x_adv: ep.Tensor, bounds: tuple[float, float]) -> list[dict[str, Any]]:
    """The first few samples' clean and adversarial inputs as plain lists, for pictures.

    Bounded (:data:`~pytest_attacktest.engine.report.MAX_EXAMPLES` samples, none when an
    input has more than ``MAX_EXAMPLE_VALUES`` values) because records travel
    through xdist and into the JSON report.
    """
    shape = tuple(int(d) for d in x.shape[1:])
    if math.prod(shape) > MAX_EXAMPLE_VALUES:
        return []
    k = min(MAX_EXAMPLES, x.shape[0])
    clean = np.round(backend.to_numpy(x[:k]).astype(np.float64), 6)
    adv = np.round(backend.to_numpy(x_adv[:k]).astype(np.float64), 6)
    return [
        {
            "index": i,
            "shape": list(shape),
            "bounds": [float(bounds[0]), float(bounds[1])],
            "clean": clean[i].reshape(-1).tolist(),
            "adversarial": adv[i].reshape(-1).tolist(),
        }
        for i in range(k)
    ]


def _zeros_labels(x: ep.Tensor) -> ep.Tensor:
    return ep.zeros(x, (x.shape[0],)).astype(_index_dtype(x))
