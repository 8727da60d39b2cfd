"""Typed options: each component (an agent, a backbone) declares a dataclass whose fields hold
every default once and whose ``__post_init__`` checks the values. :func:`typed` fills one from a
mapping, OmegaConf converting and checking the types (so an error names the key)."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlmin.errors import OptionError


def typed(cls: type, values: Any, owner: str, where: str = "", convert: bool = True) -> Any:
    """``values`` (a mapping, None, or already a ``cls``) as a ``cls`` instance.

    ``owner`` names what the options belong to in messages ("backbone 'mingru'"); ``where`` is
    the field that holds them in an enclosing options object ("backbone_options"), prefixed to
    every key an error names. ``convert``: OmegaConf converts values to the fields' types (a
    config's "2" for a float); False passes them as given (a Python caller's 1 is no bool).
    """
    if isinstance(values, cls):
        return values
    prefix = f"{where}." if where else ""
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise OptionError(where, f"{where or 'options'} must be a mapping (the options of {owner}), "
                                 f"got {values!r}")
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise OptionError(prefix + unknown[0], f"{where + ' ' if where else ''}{unknown} "
                          f"{'is not an option' if len(unknown) == 1 else 'are not options'} of "
                          f"{owner}; its options: {', '.join(fields)}")
    try:
        if not convert:
            return cls(**values)
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), dict(values)))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise OptionError(prefix + key, f"{prefix}{key}: {str(e).splitlines()[0].strip()}") from None
    except OptionError as e:  # a nested options field: its key, under ours
        raise OptionError(prefix + e.key, f"{prefix}{e}" if where and str(e).startswith(e.key) else str(e)) from None
    except (ValueError, TypeError) as e:  # __post_init__ messages open with the option's name
        key = next((f for f in sorted(fields, key=len, reverse=True) if str(e).startswith(f)), "")
        raise OptionError(prefix + key, f"{prefix}{e}" if key else f"{owner}: {e}") from None
