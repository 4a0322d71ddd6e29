"""docs/ARCHITECTURE.md's layers, enforced: no module imports a higher layer, and no import loops.

Every import counts, the ones inside functions too (an import moved into a function to dodge a
loop is still a loop). A new module must be given a layer in LAYERS.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "diffax"

# Lowest first; a module may import its own layer and those below. Names are dotted paths under
# diffax; a package name covers its modules.
LAYERS = [
    ("config fields", "config_checks"),
    (
        "math",
        "__init__ schedules distributions diffusion continuous sampling solvers timestep_sampler "
        "classifier_guidance super_resolution inpainting ode_likelihood autoencoder_losses",
    ),
    ("models", "models"),
    (
        "data and state",
        "train_state sharding checkpointing checksums compilation_cache preemption distributed "
        "cpu_devices workdir_lock console weight_files dit_weights openai_weights "
        "flag_errors images summaries vae_weights text_embeddings datasets "
        "input_pipeline metrics",
    ),
    ("builders", "build generate"),
    ("tasks", "tasks"),
    (
        "evaluation support",
        "restore latents latent_cache sample_files sample_quality sr_and_inpainting",
    ),
    ("evaluators", "evaluators"),
    ("jobs", "train evaluate validation main"),
    ("tools", "tools"),
]


def module_names(package: pathlib.Path = PACKAGE) -> dict[str, pathlib.Path]:
    """Returns {dotted name under diffax ("__init__" for the package itself): file}."""
    names = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imports_of(source: str, known: set[str]) -> set[str]:
    """Returns the diffax modules a module's source imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from diffax.x import y`: y is a module when one of that name exists.
            candidates = [f"{node.module}.{alias.name}" for alias in node.names]
            candidates = [
                c if c.removeprefix("diffax.") in known else node.module for c in candidates
            ]
        else:
            continue
        for name in candidates:
            if name == "diffax":
                found.add("__init__")
            elif name.startswith("diffax."):
                name = name.removeprefix("diffax.")
                while name not in known and "." in name:
                    name = name.rsplit(".", 1)[0]
                if name in known:
                    found.add(name)
    return found


def layer_of(name: str) -> int:
    """Returns the index in LAYERS of a module (its own entry, or its package's)."""
    for index, (_, members) in enumerate(LAYERS):
        for member in members.split():
            if name == member or name.startswith(member + "."):
                return index
    raise KeyError(name)


def import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    """Returns {module: the diffax modules it imports} for {module: source}."""
    known = set(sources)
    return {name: imports_of(text, known) - {name} for name, text in sources.items()}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Returns 'a (layer) -> b (higher layer)' for every import that climbs the layers."""
    found = []
    for name, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer_of(target) > layer_of(name):
                found.append(
                    f"{name} ({LAYERS[layer_of(name)][0]}) -> {target} "
                    f"({LAYERS[layer_of(target)][0]})"
                )
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Returns the strongly connected components of more than one module (import loops)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def package_sources() -> dict[str, str]:
    return {name: path.read_text() for name, path in module_names().items()}


def test_every_module_has_a_layer():
    unplaced = []
    for name in module_names():
        try:
            layer_of(name)
        except KeyError:
            unplaced.append(name)
    assert not unplaced, f"give these modules a layer in LAYERS: {unplaced}"


def test_no_module_imports_a_higher_layer():
    assert upward_imports(import_graph(package_sources())) == []


def test_there_are_no_import_loops():
    assert cycles(import_graph(package_sources())) == []


@pytest.mark.parametrize(
    "module, planted",
    [
        ("diffusion", "from diffax import train"),  # Math reaching up to the loop.
        ("build", "    from diffax.tasks import denoiser"),  # Inside a function: still counted.
        ("tasks.denoiser", "from diffax.evaluators import samples"),
    ],
)
def test_a_planted_upward_import_is_caught(module, planted):
    sources = package_sources()
    if planted.startswith(" "):
        planted = f"def _planted():\n{planted}\n"
    sources[module] += "\n" + planted + "\n"
    found = upward_imports(import_graph(sources))
    assert len(found) == 1 and found[0].startswith(f"{module} ("), found


def test_a_planted_loop_is_caught():
    sources = package_sources()
    sources["distributions"] += "\nfrom diffax import diffusion\n"  # diffusion imports it.
    assert ["diffusion", "distributions"] in cycles(import_graph(sources))


# Modules below the builders that take a whole config, and why; every other one takes its part
# (config.data, config.eval, ...) or plain values, so a new config section never reaches them.
WHOLE_CONFIG_BELOW_BUILDERS = {
    "checkpointing": "stores the config beside each checkpoint as a document, reading no field",
    "cpu_devices": "counts the CPU devices every batch and the mesh split over, before JAX starts",
    "config_checks": "moves an old saved config's flat model fields into their sections",
}


def whole_config_takers(sources: dict[str, str]) -> set[str]:
    """Returns the modules with a function that has a parameter named `config`."""
    found = set()
    for name, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                if any(argument.arg == "config" for argument in arguments):
                    found.add(name)
    return found


def test_below_the_builders_modules_take_config_parts_not_the_config():
    builders = [name for name, _ in LAYERS].index("builders")
    sources = package_sources()
    below = {name: text for name, text in sources.items() if layer_of(name) < builders}
    assert whole_config_takers(below) == set(WHOLE_CONFIG_BELOW_BUILDERS)
    planted = dict(below)
    planted["metrics.fid"] += "\n\ndef planted(config):\n    return config.eval\n"
    assert "metrics.fid" in whole_config_takers(planted)
