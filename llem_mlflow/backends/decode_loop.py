"""Our own greedy decode loop over a static KV cache (``compile: graph``): one CUDA graph per decode step.

``generate()`` spends milliseconds of Python per decode step (logits processors, stopping criteria, kwargs
bookkeeping), so at small batch a GPU waits on the host. This loop does what ``generate()`` does for the
workload (greedy, exactly ``new_tokens`` new tokens per row, EOS never chosen, as ``min_new_tokens`` makes
it) with none of that: the prefill runs once, eagerly; each decode step is ``model(token, mask, position,
cache)`` + argmax with every input and output in a fixed tensor (``DecodeState``), so the step has no
Python-side state. On CUDA the step is captured once per batch-size bucket in a ``torch.cuda.CUDAGraph``
(``CudaGraphs``: warm-up on a side stream, then capture) and each later step is one ``replay()``; on CPU
(or with no capturer) the same step runs uncaptured, which is how its tokens are tested.

What it mirrors of transformers' ``generate()`` (5.x; 4.x keywords handled where named):

* positions: the prefill's are ``mask.cumsum(-1) - 1`` (pads 0), each decode step's the last plus one;
* masks: the prefill gets the 2-D prompt mask (``None`` when nothing is padded, as ``generate()`` drops
  an all-ones mask); decode steps get a 2-D mask over the whole cache (the prompt mask, then ones): with a
  static cache transformers always builds the causal mask from the cache offset, so entries past the
  current position are masked as in ``generate()``'s growing mask;
* scores: the last position's logits in fp32, EOS ids set to ``-inf`` (``MinNewTokensLengthLogitsProcessor``),
  argmax (first index on ties);
* ``logits_to_keep=1``, ``use_cache=True``; the cache keyword is ``cache`` (5.2x) or ``past_key_values``;
  a ``cache_position`` tensor is passed (and advanced) where ``forward`` takes one (4.x).

State lives per batch size (a bucket: its ``StaticCache``, its tensors, its captured step), kept on the
model (``loop_for``) so it goes with the model. Every call resets the cache and tensors in place (fresh
zeros, as a new ``generate()`` cache), so captured addresses stay valid. ``check_supported`` refuses what
this loop cannot run (a model split over devices, no standard cache, sliding-window or linear layers).
torch and transformers are imported lazily.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from llem_mlflow.errors import BackendError, ConfigError

#: Unrecorded decode steps run on a side stream before a capture (kernels chosen, workspaces allocated).
WARMUP_STEPS = 2
_ATTRIBUTE = "_llem_decode_loop"  # where the model keeps its loop (and with it the buckets)
_FALLBACK = "use compile: reduce-overhead (generate()'s own compiled path) or compile: off"


class GraphCapture(Protocol):
    """Turns a decode step into its replay: on CUDA, a captured CUDA graph (``CudaGraphs``)."""

    def capture(self, step: Callable[[], None]) -> Callable[[], None]: ...


class CudaGraphs:
    """Capture of one decode step in a ``torch.cuda.CUDAGraph`` (warm-up on a side stream first).

    ``compile_mode`` (e.g. ``"default"``): the step is first compiled by ``torch.compile`` (inductor's
    fused kernels, no CUDA graphs of its own; compiled in the warm-up) and the compiled step is captured.
    Faster, but its kernels round differently from eager ones, so greedy tokens of a bf16 model can part
    from eager's at a near-tie; ``compile: graph`` leaves it off (the benchmark's ``graph+compile`` sets it).
    """

    def __init__(
        self, device: Any, warmup_steps: int = WARMUP_STEPS, compile_mode: str | None = None
    ) -> None:
        self.device = device
        self.warmup_steps = warmup_steps
        self.compile_mode = compile_mode

    def capture(self, step: Callable[[], None]) -> Callable[[], None]:
        """Run ``step`` ``warmup_steps`` times on a side stream, capture it once; returns the replay."""
        import torch

        if self.compile_mode is not None:
            step = torch.compile(step, mode=self.compile_mode, dynamic=False)

        main = torch.cuda.current_stream(self.device)
        stream_cls: Any = torch.cuda.Stream  # untyped vendor API
        side = stream_cls(self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            for _ in range(self.warmup_steps):
                step()
        main.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # records on its own stream; nothing runs until replay()
            step()
        replay: Callable[[], None] = graph.replay
        return replay


@dataclass(frozen=True)
class ForwardSpec:
    """Which keywords the model's ``forward`` takes (they moved between transformers versions)."""

    cache_key: str
    cache_position: bool
    position_ids: bool
    logits_to_keep: bool

    @classmethod
    def of(cls, model: Any) -> ForwardSpec:
        params = inspect.signature(model.forward).parameters
        key = next((k for k in ("cache", "past_key_values") if k in params), None)
        if key is None:
            raise ConfigError(
                f"compile: graph needs a model whose forward() takes a KV cache; {type(model).__name__} "
                f"takes neither cache nor past_key_values: {_FALLBACK}"
            )
        return cls(key, "cache_position" in params, "position_ids" in params, "logits_to_keep" in params)


@dataclass
class DecodeState:
    """The fixed tensors of one batch-size bucket: every decode step reads and writes only these."""

    cache: Any
    tokens: Any  # (B, 1) long: the token the next step feeds
    positions: Any  # (B, 1) long: its position id
    mask: Any  # (B, cache_len) long: the prompt mask, then ones
    generated: Any  # (B, cache_len) long: new token t in column t
    step: Any  # (1,) long: the next column of ``generated``
    cache_position: Any  # (1,) long: the next cache slot (for a forward() that takes cache_position)
    eos: Any  # (k,) long ids never chosen, or None

    @property
    def cache_len(self) -> int:
        return int(self.mask.shape[1])


@dataclass
class Bucket:
    """One batch size's state and, once captured, its decode-step replay."""

    state: DecodeState
    replay: Callable[[], None] | None = None
    captures: int = 0


def new_static_cache(model: Any, batch_size: int, cache_len: int, device: Any) -> Any:
    """transformers' ``StaticCache`` of ``cache_len`` slots (keywords as the installed version names them)."""
    from transformers import StaticCache

    cache_cls: Any = StaticCache  # untyped vendor API
    params = inspect.signature(cache_cls.__init__).parameters
    config = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else None
    kwargs: dict[str, Any] = {"config": config or model.config, "max_cache_len": cache_len}
    for name, value in (("batch_size", batch_size), ("max_batch_size", batch_size), ("device", device)):
        if name in params:
            kwargs[name] = value
    if "dtype" in params:
        kwargs["dtype"] = model.dtype
    return cache_cls(**kwargs)


def new_state(model: Any, batch_size: int, cache_len: int, device: Any) -> DecodeState:
    """Zeroed tensors and a fresh cache for ``batch_size`` rows and ``cache_len`` slots."""
    import torch

    def longs(*shape: int) -> Any:
        return torch.zeros(shape, dtype=torch.long, device=device)

    cache = new_static_cache(model, batch_size, cache_len, device)
    return DecodeState(
        cache=cache,
        tokens=longs(batch_size, 1),
        positions=longs(batch_size, 1),
        mask=longs(batch_size, cache_len),
        generated=longs(batch_size, cache_len),
        step=longs(1),
        cache_position=longs(1),
        eos=None,
    )


def greedy(logits: Any, eos: Any) -> Any:
    """generate()'s greedy pick: fp32 scores, EOS ids at -inf (min_new_tokens), argmax over the vocabulary."""
    scores = logits.to(dtype=_float32(), copy=True)
    if eos is not None:
        scores.index_fill_(1, eos, float("-inf"))
    return scores.argmax(dim=-1)


def _float32() -> Any:
    import torch

    return torch.float32


def forward_kwargs(
    spec: ForwardSpec, state: DecodeState, position_ids: Any, cache_position: Any
) -> dict[str, Any]:
    """The keywords of one forward pass beside ``input_ids`` and ``attention_mask``."""
    kwargs: dict[str, Any] = {spec.cache_key: state.cache, "use_cache": True}
    if spec.position_ids:
        kwargs["position_ids"] = position_ids
    if spec.logits_to_keep:
        kwargs["logits_to_keep"] = 1
    if spec.cache_position:
        kwargs["cache_position"] = cache_position
    return kwargs


def decode_step(model: Any, spec: ForwardSpec, state: DecodeState) -> None:
    """One token per row: forward the last token, pick the next; only ``state``'s tensors change."""
    kwargs = forward_kwargs(spec, state, state.positions, state.cache_position)
    logits = model(input_ids=state.tokens, attention_mask=state.mask, **kwargs).logits
    state.tokens.copy_(greedy(logits[:, -1, :], state.eos).unsqueeze(-1))
    state.generated.index_copy_(1, state.step, state.tokens)
    state.step.add_(1)
    state.positions.add_(1)
    state.cache_position.add_(1)


def load(state: DecodeState, prompt_mask: Any, eos: Any) -> bool:
    """A fresh start for a new batch: zeroed cache and counters, the prompt mask then ones, the EOS ids.

    Every tensor is written in place (a captured step reads them by address). Returns False when the EOS
    ids could not be (their count changed, or they came or went): ``state.eos`` is then a new tensor and a
    captured step is stale.
    """
    width = int(prompt_mask.shape[1])
    state.cache.reset()
    state.mask[:, :width].copy_(prompt_mask)
    state.mask[:, width:].fill_(1)
    for tensor in (state.tokens, state.positions, state.generated, state.step, state.cache_position):
        tensor.zero_()
    if eos is not None and state.eos is not None and eos.shape == state.eos.shape:
        state.eos.copy_(eos)
        return True
    in_place = eos is None and state.eos is None
    state.eos = None if eos is None else eos.clone()
    return in_place


def prefill(model: Any, spec: ForwardSpec, state: DecodeState, call: LoopCall) -> None:
    """The prompt's forward pass into the cache and the first new token (column 0 of ``generated``)."""
    import torch

    input_ids, prompt_mask = call.input_ids, call.attention_mask
    width = int(input_ids.shape[1])
    positions = (prompt_mask.cumsum(-1) - 1).masked_fill(prompt_mask == 0, 0)
    cache_position = torch.arange(width, device=input_ids.device)
    kwargs = forward_kwargs(spec, state, positions, cache_position)
    logits = model(input_ids=input_ids, attention_mask=prompt_mask if call.padded else None, **kwargs).logits
    state.tokens.copy_(greedy(logits[:, -1, :], state.eos).unsqueeze(-1))
    state.generated[:, :1].copy_(state.tokens)
    state.step.fill_(1)
    state.positions.copy_(positions[:, -1:] + 1)
    state.cache_position.fill_(width)


@dataclass
class DecodeLoop:
    """The buckets of one model (one per batch size) and how steps are captured (None: uncaptured)."""

    graphs: GraphCapture | None = None
    buckets: dict[int, Bucket] = field(default_factory=dict)

    def bucket(self, model: Any, batch_size: int, cache_len: int, device: Any) -> Bucket:
        """The batch size's bucket, made (or remade with a longer cache) when needed."""
        found = self.buckets.get(batch_size)
        if found is None or found.state.cache_len < cache_len:
            found = Bucket(new_state(model, batch_size, cache_len, device))
            self.buckets[batch_size] = found
        return found

    def run(self, model: Any, call: LoopCall, timer: Any) -> Any:
        """Greedy tokens of ``call`` (prompt then ``new_tokens`` per row), marking ``timer`` per token."""
        import torch

        ids, mask, new_tokens = call.input_ids, call.attention_mask, call.new_tokens
        if new_tokens < 1:
            raise BackendError(f"the decode loop needs at least one new token, not {new_tokens}")
        spec = ForwardSpec.of(model)
        bucket = self.bucket(model, int(ids.shape[0]), call.cache_len, ids.device)
        state = bucket.state
        if not load(state, mask, call.eos):
            bucket.replay = None  # it reads EOS ids from a tensor that is gone
        if self.graphs is not None and bucket.replay is None and new_tokens > 1:
            prefill(model, spec, state, call)  # allocates the cache's tensors outside the graph
            load(state, mask, call.eos)  # warm-up starts from slot 0: always inside the cache
            bucket.replay = self.graphs.capture(lambda: decode_step(model, spec, state))
            bucket.captures += 1
            load(state, mask, call.eos)
            timer.start()  # the capture is not part of this call's step timings
        prefill(model, spec, state, call)
        timer(state.tokens, state.tokens)
        advance = bucket.replay or (lambda: decode_step(model, spec, state))
        for _ in range(new_tokens - 1):
            advance()
            timer(state.tokens, state.tokens)
        return torch.cat([ids, state.generated[:, :new_tokens]], dim=1)


@dataclass(frozen=True)
class LoopCall:
    """One batch for the loop: left-padded ids and mask on the model's device, new tokens, cache slots."""

    input_ids: Any
    attention_mask: Any
    new_tokens: int
    cache_len: int
    eos: Any  # (k,) long tensor of EOS ids on the device, or None
    padded: bool  # some row is shorter than the widest (else the prefill gets no mask, as in generate())


def loop_for(model: Any, graphs: GraphCapture | None) -> DecodeLoop:
    """The model's own loop (its buckets live as long as it does); made on first use."""
    loop = getattr(model, _ATTRIBUTE, None)
    if not isinstance(loop, DecodeLoop):
        loop = DecodeLoop(graphs)
        object.__setattr__(model, _ATTRIBUTE, loop)  # plain attribute: not a submodule, not in state_dict
    return loop


def check_supported(model: Any) -> None:
    """Raise ``ConfigError`` (with what to do) where the loop cannot run ``model``."""
    name = type(model).__name__
    devices = {str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()}
    if len(devices) > 1:
        raise ConfigError(
            f"compile: graph runs the whole model on one device, but {name} is split over {len(devices)} "
            f"devices (device_map); remove device_map (use a GPU that holds the model), or {_FALLBACK}"
        )
    if getattr(model.config, "is_encoder_decoder", False):
        raise ConfigError(
            f"compile: graph decodes decoder-only models; {name} is encoder-decoder: {_FALLBACK}"
        )
    supports = getattr(model, "_supports_default_dynamic_cache", None)
    if callable(supports) and not supports():
        raise ConfigError(f"compile: graph needs transformers' KV cache; {name} keeps its own: {_FALLBACK}")
    ForwardSpec.of(model)
    _check_layers(model, name)


def _check_layers(model: Any, name: str) -> None:
    """Every cache layer must be a plain ``StaticLayer``: others keep Python-side state between steps."""
    layers = getattr(new_static_cache(model, 1, 2, "cpu"), "layers", None)  # lazy: allocates nothing
    if layers is None:
        return  # transformers 4.x: one static cache class, tensor state only
    other = sorted({type(layer).__name__ for layer in layers if type(layer).__name__ != "StaticLayer"})
    if other:
        raise ConfigError(
            f"compile: graph supports full-attention static caches only; {name}'s cache has "
            f"{', '.join(other)} layers: {_FALLBACK}"
        )
