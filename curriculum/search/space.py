"""A search space from Hydra's sweep syntax: interval(a,b) (tag log, tag int), range(a,b,step) and a,b,c choices."""

from __future__ import annotations

from dataclasses import dataclass

from curriculum.config import ConfigError


@dataclass
class Space:
    """The searched keys as Optuna distributions, and the overrides every trial shares."""

    params: dict  # key -> optuna distribution
    fixed: list[str]

    def overrides(self, values: dict) -> list[str]:
        """A trial's command-line overrides: the shared ones, then its values."""
        return self.fixed + [f"{k}={_literal(v)}" for k, v in values.items()]

    def first_values(self) -> dict:
        """One allowed value per key (the low end, the first choice), to validate the config before any trial."""
        import optuna

        out = {}
        for key, d in self.params.items():
            out[key] = d.choices[0] if isinstance(d, optuna.distributions.CategoricalDistribution) else d.low
        return out

    def describe(self) -> dict:
        """{key: distribution as text}, saved in the search folder and shown by the report."""
        return {k: _text(d) for k, d in self.params.items()}


def parse_space(args: list[str]) -> Space:
    """Split overrides into the searched keys (sweep syntax) and the shared ones; refuse a sweep that cannot be searched."""
    import optuna
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    D = optuna.distributions
    params, fixed = {}, []
    for o in OverridesParser.create().parse_overrides(args):
        if not o.is_sweep_override():
            fixed.append(o.input_line)
            continue
        key, sweep = o.get_key_element(), o.value()
        if isinstance(sweep, IntervalSweep):
            if "int" in sweep.tags:
                params[key] = D.IntDistribution(int(sweep.start), int(sweep.end), log="log" in sweep.tags)
            else:
                params[key] = D.FloatDistribution(sweep.start, sweep.end, log="log" in sweep.tags)
        elif isinstance(sweep, RangeSweep):
            values = list(o.sweep_iterator())
            if not values:
                raise ConfigError(f"{o.input_line}: the range is empty.")
            if all(isinstance(v, int) for v in values):
                params[key] = D.IntDistribution(values[0], values[-1], step=int(sweep.step or 1))
            else:
                params[key] = D.FloatDistribution(float(values[0]), float(values[-1]), step=float(sweep.step or 1))
        elif isinstance(sweep, ChoiceSweep):
            params[key] = D.CategoricalDistribution(list(o.sweep_iterator()))
        else:
            raise ConfigError(f"{o.input_line}: a search takes interval(a,b), range(a,b,step) or a,b,c choices, not this sweep.")
        if key.startswith(("search.", "hydra.")):
            raise ConfigError(f"{o.input_line}: {key.split('.')[0]}.* keys set the search itself and cannot be searched.")
    if not params:
        raise ConfigError("curriculum-search needs at least one searched key, e.g. 'schedule.stages.blend.mix.text_only=interval(0,0.6)'.")
    return Space(params, fixed)


def _literal(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _text(d) -> str:
    import optuna

    D = optuna.distributions
    if isinstance(d, D.CategoricalDistribution):
        return "choice(" + ", ".join(map(str, d.choices)) + ")"
    kind = "int" if isinstance(d, D.IntDistribution) else "float"
    extra = ", log" if d.log else f", step {d.step}" if d.step not in (None, 1) else ""
    return f"{kind} [{d.low}, {d.high}{extra}]"
