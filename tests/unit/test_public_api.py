"""The public surface: everything in __all__ imports, nothing private leaks."""

import sagakit


def test_all_names_import_and_are_public() -> None:
    assert isinstance(sagakit.__all__, tuple)
    for name in sagakit.__all__:
        assert not name.startswith("_"), name
        assert getattr(sagakit, name) is not None, name


def test_no_private_module_names_leak() -> None:
    # "@py_builtins" and the like: pytest rewrites the asserts of the plugin's package
    public = {n for n in vars(sagakit) if not n.startswith(("_", "@"))}
    modules = {"broker", "cli", "eventlog", "scenario", "transport", "testing", "tracing"}
    leaked = public - set(sagakit.__all__) - modules
    assert leaked == set()
