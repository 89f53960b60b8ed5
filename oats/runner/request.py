"""One compression request: everything that decides a run's result, its folder name, and
whether a run folder already holds it.

``oats compress``, the app's background jobs and ``oats sweep`` all describe their work as a
:class:`CompressRequest` and hand it to :func:`oats.runner.execute.execute`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from oats import corpora
from oats.compress.allocation import Owl
from oats.compress.calibration import check_block_inputs, recorded_block_inputs
from oats.config import OatsConfig
from oats.errors import ConfigError, OatsError
from oats.methods import registry
from oats.runs.info import data_kind, recorded_domain

ITERATIVE_FIELDS = ("rank_ratio", "iterations", "solver")
"""Config fields that change the result only for a method whose record is ``iterative`` (OATS);
for the others compression rate and sparsity pattern decide it."""


def check_calib_domain(name: str | None, kind: str | None) -> str:
    """``name`` (None: the mix) checked against the domains of ``kind``, or against every domain
    name when the kind is not known yet; ConfigError (one line) listing the choices otherwise."""
    if kind is not None:
        other = "images" if kind == "text" else "text"
        if name in corpora.domains(other):
            raise ConfigError(f"calibration domain {name!r} is for {'vision' if other == 'images' else 'text'} "
                              f"models, and this model takes {kind}: choose {corpora.MIX} or one of "
                              f"{', '.join(corpora.domains(kind))}")
        return corpora.check_domain(name, kind)
    if name is None or name == corpora.MIX:
        return corpora.MIX
    names = corpora.domains("text") + corpora.domains("images")
    if name not in names:
        raise ConfigError(f"unknown calibration domain {name!r}: choose {corpora.MIX} or one of {', '.join(names)}")
    return name


def slug(s: str) -> str:
    """A model name as part of a folder name: no separators, no '..', no leading dot."""
    text = "".join(c if c.isalnum() or c in "-_." else "-" for c in str(s))
    while ".." in text:
        text = text.replace("..", "-")
    return text.strip("-.")


@dataclass(frozen=True)
class CompressRequest:
    """A compression to run: model, method, configuration, allocation, calibration, device."""

    model: str
    """Preset name, hub id, local model folder or timm:NAME (what ``oats.models.zoo.load_model`` takes)."""
    config: OatsConfig = field(default_factory=OatsConfig)
    method: str = "oats"
    allocation: Owl | None = None
    """OWL-style per-block rates; None: every block at the configured rate."""
    calib_source: str | None = None
    """A text file (text models) or an image folder (vision models); None: the built-in data."""
    calib_domain: str | None = None
    """The built-in calibration data: a domain of ``oats.corpora`` (text: manual, code, verse,
    speeches; images: photos, drawings, textures), or None / "mix" for an equal share of every
    domain of the model's kind (the default). Ignored when ``calib_source`` is given."""
    calib_samples: int | None = None
    """Calibration sequences or images; None: the data module's default for the task."""
    seq_len: int | None = None
    """Tokens per calibration sequence (causal LMs); None: the data module's default."""
    seed: int = 0
    device: str | None = None
    """Where the decompositions run ("cpu", "cuda", "cuda:1"); None: a GPU when there is one."""
    generic: bool = False
    """Compress a model no adapter knows with the generic one (every nn.Linear in its blocks)."""
    trust_remote_code: bool = False
    """Run a hub model's own code; only when the user asks."""
    evaluate: bool = True
    """Evaluate the run's variants afterwards and keep ``evaluation.json`` next to it."""
    from_disk: bool = False
    """Larger-than-memory mode: read each block from the weight files when its turn comes
    (``oats.models.zoo.load_model(..., from_disk=True)``). The run is the same as in memory."""
    block_inputs: str = "compressed"
    """What each block is calibrated on (``oats.compress.calibration.BLOCK_INPUTS``): the outputs
    of the compressed blocks before it (the default, sequential) or the dense model's own
    ("dense": blocks independent, so ``oats.runner.blocks_ray`` can compress them in parallel)."""

    def __post_init__(self):
        if self.calib_domain == corpora.MIX:  # one spelling of the default, so equal requests compare equal
            object.__setattr__(self, "calib_domain", None)

    def check(self) -> None:
        """Raise ConfigError (one line) for a combination that cannot run, before anything loads."""
        registry.get(self.method).decompose_config(self.config)
        check_block_inputs(self.block_inputs)
        if self.allocation is not None:
            self.allocation.check(self.config)
        if self.calib_domain is not None and not isinstance(self.calib_domain, str):
            raise ConfigError(f"the calibration domain must be a name, not {type(self.calib_domain).__name__}")
        if self.calib_source is None:
            check_calib_domain(self.calib_domain, data_kind(self.model))

    @property
    def domain(self) -> str | None:
        """The built-in calibration domain used: a domain name or "mix"; None with the user's
        own data (``calib_source``)."""
        if self.calib_source:
            return None
        return corpora.MIX if self.calib_domain is None else self.calib_domain

    @property
    def rank_ratio(self) -> float:
        """The share of the kept parameters the method spends on the low-rank term."""
        return registry.used_rank_ratio(self.method, self.config)

    def calibration_request(self) -> dict:
        """The manifest's record of the calibration data."""
        return {"samples": self.calib_samples, "seq_len": self.seq_len, "seed": self.seed, "source": self.calib_source,
                "domain": self.domain}

    def folder_name(self) -> str:
        """A readable, deterministic run folder name: the same settings give the same folder,
        so the app, sweeps and repeated requests find each other's runs.

        ``<model>-<method>-c<rho>-k<kappa>-<sparsity>[-it<n>][-<solver>][-sh<lambda>][-owl...][-cal...]-<data>``
        (then ``-dense-inputs`` for a run calibrated on the dense model's block inputs) where ``<data>`` is ``mix`` for the default calibration (an equal share of every domain)
        or ``cal<domain>`` for one built-in domain; a calibration file or folder (no data tag),
        or non-default eps / tol, add a short hash of themselves.

        Folders named before calibration domains existed have no data tag and hold runs
        calibrated on the Python manual alone (``oats.runs.info.LEGACY_DOMAINS``): no name this
        method gives with the built-in data is one of theirs, so a new run never lands in an old
        folder.
        """
        c = self.config
        model = slug(self.model) or "model"
        if model != self.model:  # './minilm-l6' or 'org/name' must not share the preset's folder
            model += "-" + hashlib.sha1(self.model.encode()).hexdigest()[:6]
        parts = [model, self.method, f"c{c.compression:g}", f"k{self.rank_ratio:g}", c.sparsity.replace(":", "of")]
        iterative = self._iterative()
        if iterative and c.iterations != OatsConfig().iterations:
            parts.append(f"it{c.iterations}")
        if iterative and c.solver != OatsConfig().solver:
            parts.append(c.solver)
        method = registry.find(self.method)
        if method is not None and method.uses_shrink and method.shrink(c) != method.default_shrink:
            parts.append(f"sh{method.shrink(c):g}")
        if self.allocation is not None:
            parts.append(f"owl{self.allocation.lam:g}m{self.allocation.threshold:g}")
        if self.calib_samples is not None or self.seq_len is not None or self.seed:
            parts.append(f"cal{self.calib_samples or 'd'}x{self.seq_len or 'd'}s{self.seed}")
        domain = self.domain
        if domain is not None:
            parts.append(domain if domain == corpora.MIX else "cal" + slug(domain))
        if self.block_inputs != "compressed":  # calibrated on the dense model's block inputs
            parts.append(f"{self.block_inputs}-inputs")
        name = "-".join(parts)
        default = OatsConfig()
        if self.calib_source or c.eps != default.eps or c.tol != default.tol:
            extra = {"source": self.calib_source or "", "eps": c.eps, "tol": c.tol}
            name += "-" + hashlib.sha1(json.dumps(extra, sort_keys=True).encode()).hexdigest()[:8]
        return name

    def _iterative(self) -> bool:
        """Whether every setting (iterations, solver, rank ratio) shapes the run: the method's
        record says (False for a method not registered here, so any name still gets a folder)."""
        method = registry.find(self.method)
        return method is not None and method.iterative

    def _reads_shrink(self) -> bool:
        """Whether the Gram shrinkage ``config.shrink`` shapes the run (the method record's ``uses_shrink``)."""
        method = registry.find(self.method)
        return method is not None and method.uses_shrink

    def identity(self) -> tuple:
        """What decides the result: two requests with equal identities make the same run."""
        c = self.config
        method = registry.find(self.method)
        if method is not None:
            c = method.resolved(c)  # shrink None and the method's default are the same run
        ignored = (() if self._iterative() else ITERATIVE_FIELDS) + (() if self._reads_shrink() else ("shrink",))
        cfg = tuple(sorted((k, v) for k, v in c.to_dict().items() if k not in ignored))
        alloc = None if self.allocation is None else (self.allocation.lam, self.allocation.threshold)
        cal = (self.calib_samples, self.seq_len, self.seed or 0, self.calib_source or None, self.domain)
        return (self.model, self.method, cfg, alloc, cal, self.block_inputs)

    def same_run(self, manifest: dict) -> bool:
        """Whether a run folder's manifest records this request's run."""
        try:
            other = request_from_manifest(manifest)
        except (OatsError, KeyError, TypeError, ValueError, AttributeError, OverflowError):
            return False
        return other.identity() == self.identity()

    def to_json(self) -> str:
        body = {"model": self.model, "config": self.config.to_dict(), "method": self.method,
                "allocation": None if self.allocation is None else self.allocation.to_dict(),
                "calib_source": self.calib_source, "calib_domain": self.calib_domain,
                "calib_samples": self.calib_samples, "seq_len": self.seq_len,
                "seed": self.seed, "device": self.device, "generic": self.generic,
                "trust_remote_code": self.trust_remote_code, "evaluate": self.evaluate, "from_disk": self.from_disk,
                "block_inputs": self.block_inputs}
        return json.dumps(body)

    @classmethod
    def from_json(cls, text: str) -> CompressRequest:
        body = json.loads(text)
        alloc = body.get("allocation")
        return cls(**{**body, "config": OatsConfig(**body["config"]),
                      "allocation": None if alloc is None else _owl(alloc)})


def _owl(alloc: dict) -> Owl:
    return Owl(lam=alloc["lam"], threshold=alloc["threshold"])


def request_from_manifest(manifest: dict, **options) -> CompressRequest:
    """The request that produced a run folder (to resume or re-evaluate it).

    ``options``: the fields a manifest does not record (device, generic, trust_remote_code,
    evaluate). A manifest written before calibration domains existed (no "domain" in its
    calibration request) was calibrated on the Python manual, or the bundled photos for a
    vision model: its request names that domain (``oats.runs.info.recorded_domain``), never
    the mix.
    """
    cal = manifest.get("calibration_request") or {}
    alloc = manifest.get("allocation") or {}
    domain = recorded_domain(manifest)
    return CompressRequest(model=manifest["model_name"], config=OatsConfig.from_dict(manifest["config"]),
                           method=manifest["method"], allocation=_owl(alloc) if alloc.get("name") == "owl" else None,
                           calib_source=cal.get("source"), calib_domain=None if cal.get("source") else domain,
                           calib_samples=cal.get("samples"),
                           seq_len=cal.get("seq_len"), seed=cal.get("seed") or 0,
                           block_inputs=recorded_block_inputs(manifest.get("calibration")), **options)
