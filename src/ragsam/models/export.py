"""Write SAM weights as a Hugging Face folder (``config.json`` + ``model.safetensors``).

Used by ``ragsam weights convert`` (Meta / MedSAM ``.pth`` -> HF folder) and
``ragsam merge`` (fine-tuned run -> merged HF folder). Folders are written
atomically: a crash leaves no half-written output.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

from ragsam.errors import InputError
from ragsam.models.registry import ARCHITECTURES, sam_config
from ragsam.models.sam import MultiOrganSam
from ragsam.models.weights import checkpoint_arch, read_state_dict
from ragsam.utils.atomic import atomic_dir, write_json


def save_hf_folder(model: MultiOrganSam, out_dir: str | PathLike, force: bool = False,
                   extra: dict[str, str] | None = None) -> Path:
    """Save ``model``'s weights with ``save_pretrained`` into ``out_dir`` (atomic).

    Args:
        model: a model without adapters (LoRA merged: :func:`ragsam.peft.merge_peft`).
        extra: optional files ``name -> text`` written next to the weights
            (e.g. ``ragsam_config.yaml``).
    Raises:
        InputError: the model still holds PEFT modules HF SAM cannot represent.
        OutputExistsError: ``out_dir`` exists and not ``force``.
    """
    leftovers = [k for k in model.state_dict() if ".lora_" in k or "_adapter." in k]
    if leftovers:
        raise InputError(out_dir, f"the model holds {len(leftovers)} PEFT tensors that a SAM folder cannot "
                                  f"store (e.g. {leftovers[0]}); merge LoRA first, adapters cannot be merged")
    sam = model.to_hf()
    with atomic_dir(out_dir, force=force) as tmp:
        sam.save_pretrained(str(tmp))
        for name, text in (extra or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        write_json(tmp / "ragsam.json", {"arch": model.arch, "num_classes": model.num_classes,
                                         "image_size": model.image_size})
    return Path(out_dir)


def convert_checkpoint(source: str | PathLike, out_dir: str | PathLike, force: bool = False) -> Path:
    """Convert a Meta SAM / MedSAM checkpoint (or any SAM weights) to a HF folder at its own size.

    The architecture is recognised from the tensor shapes; the state dict is
    loaded strictly (every key mapped, nothing left over) before writing.

    Returns:
        ``out_dir``.
    """
    from ragsam.models.loading import load_pretrained

    state = read_state_dict(str(source))
    name, width, depth = checkpoint_arch(state)
    if name is None:
        raise InputError(source, f"not a known SAM architecture (ViT width {width}, depth {depth}; known: "
                                 f"{', '.join(f'{n} {a.width}/{a.depth}' for n, a in ARCHITECTURES.items())})")
    arch = ARCHITECTURES[name]
    tokens = int(state["mask_decoder.mask_tokens.weight"].shape[0]) if "mask_decoder.mask_tokens.weight" in state \
        else 4
    del state
    model = MultiOrganSam(sam_config(arch, arch.pretrain_size, num_mask_tokens=tokens), arch=name)
    model.load_report = load_pretrained(model, str(source))
    return save_hf_folder(model, out_dir, force=force)


def read_model_config(path: str | PathLike):
    """A :class:`ModelConfig` from a run folder, a run's ``config.yaml`` or a bare model YAML.

    A mapping with a ``model:`` section (a training configuration) uses that
    section; otherwise the whole mapping holds ModelConfig keys.
    """
    import yaml

    from ragsam.config import from_dict, to_dict
    from ragsam.models.config import ModelConfig

    path = Path(path)
    if path.is_dir():
        if not (path / "config.yaml").is_file():
            raise InputError(path, "not a ragsam run folder (no config.yaml)")
        path = path / "config.yaml"
    if not path.is_file():
        raise InputError(path, "configuration file does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(path, "configuration must be a YAML mapping")
    section, prefix = (data["model"], "model.") if "model" in data else (data, "")
    if not isinstance(section, dict):
        raise InputError(path, "the 'model:' section must be a mapping")
    merged = to_dict(ModelConfig())
    peft = section.get("peft")
    merged.update({k: v for k, v in section.items() if k != "peft"})
    if isinstance(peft, dict):
        merged["peft"].update(peft)
    elif peft is not None:
        merged["peft"] = peft
    return from_dict(ModelConfig, merged, source=str(path), prefix=prefix)


def merge_run(run_dir: str | PathLike, out_dir: str | PathLike, checkpoint: str = "model.safetensors",
              force: bool = False) -> Path:
    """Fold a LoRA run into SAM's weights and save a Hugging Face folder.

    Builds the run's model (its base ``weights`` must be available), loads the
    trained tensors ``<run_dir>/<checkpoint>``, merges LoRA and writes
    ``out_dir`` (``config.json``, ``model.safetensors``, ``ragsam.json`` and
    ``ragsam_model.yaml``, the run's model configuration). The folder loads with
    ``build_sam_model(arch, out_dir, num_classes, image_size, normalize)`` at the
    run's size and with the run's ``model.normalize`` (``none`` for the SAMed
    presets: the folder's weights expect the [0, 1] slice) and gives the run's outputs.

    Raises:
        InputError: not a run folder, missing checkpoint, adapter run (not mergeable).
    """
    from ragsam.config import dump_config
    from ragsam.models.build import build_model
    from ragsam.peft.apply import load_trainable, merge_peft

    cfg = read_model_config(run_dir)
    if cfg.peft.method == "adapter" or cfg.peft.decoder_adapters:
        raise InputError(run_dir, "Med-SA adapters are non-linear and cannot be merged into SAM's weights; "
                                  "use the run folder directly")
    weights = Path(run_dir) / checkpoint
    if not weights.is_file():
        raise InputError(weights, "trained weights not found")
    model = build_model(cfg)
    load_trainable(model, weights)
    merge_peft(model)
    return save_hf_folder(model, out_dir, force=force, extra={"ragsam_model.yaml": dump_config(cfg)})
