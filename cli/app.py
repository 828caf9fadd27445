"""The `chanscope` command: assembles the subcommands and turns library errors into one-line messages."""

from __future__ import annotations

import typer

from chanscope.accel.cpu_alloc import DEFAULT_CPU_ALLOC, set_cpu_alloc

from ._console import handle_errors
from .ablate import ablate_command
from .activations import activations_command
from .compare import compare_command
from .eval import eval_command
from .layers import layers_command
from .plot import app as plot_app
from .plot import report_command
from .reproduce import reproduce_command
from .sensitivity import sensitivity_command
from .series import series_command
from .train import control_command, train_command
from .zoo import zoo_command

app = typer.Typer(name="chanscope", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Channel-wise activation studies of adversarially trained CNNs (CIFS, ICML 2021).")
app.command("train")(handle_errors(train_command))
app.command("control")(handle_errors(control_command))
app.command("eval")(handle_errors(eval_command))
app.command("activations")(handle_errors(activations_command))
app.command("layers")(handle_errors(layers_command))
app.command("reproduce")(handle_errors(reproduce_command))
app.command("series")(handle_errors(series_command))
app.command("compare")(handle_errors(compare_command))
app.command("report")(report_command)
app.command("ablate")(handle_errors(ablate_command))
app.command("sensitivity")(handle_errors(sensitivity_command))
app.command("zoo")(handle_errors(zoo_command))
app.add_typer(plot_app, name="plot")


def _print_version(value: bool) -> None:
    """Eager: prints and exits before Typer asks for a command."""
    if value:
        from chanscope._version import __version__

        typer.echo(f"chanscope {__version__}")
        raise typer.Exit(0)


def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                       help="Print the version and exit."),
          cpu_alloc: str = typer.Option(
              DEFAULT_CPU_ALLOC, "--cpu-alloc", envvar="CHANSCOPE_CPU_ALLOC",
              help="CPU memory: system (glibc's defaults) or reuse (keep freed blocks for the next batch: faster at "
              "full width and batch 128, higher peak RSS; docs/benchmarks.md). Speed only; goes before the command.")
          ) -> None:
    """Channel-wise activation studies of adversarially trained CNNs (CIFS, ICML 2021)."""
    set_cpu_alloc(cpu_alloc)


app.callback()(handle_errors(_root))  # a bad --cpu-alloc is one line, as in every command


def main() -> None:
    """Console entry point: library errors are turned into one line by each command's handle_errors, usage
    errors (an unknown flag, a value a flag does not take) into one line here."""
    import sys
    import warnings

    from chanscope.accel.threads import share_cpu

    share_cpu()  # before any command loads torch: idle OpenMP threads sleep (a variable the user set is kept)

    def one_line(message, category, filename, lineno, file=None, line=None) -> None:  # no source path and code
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = one_line
    try:
        rc = app(standalone_mode=False)
    except Exception as e:  # Typer's own click (vendored or not): matched by class name, not import path
        kinds = {c.__name__ for c in type(e).__mro__}
        if "UsageError" in kinds:
            ctx = getattr(e, "ctx", None)
            where = f" (try '{ctx.command_path} --help')" if ctx is not None else ""
            msg, args = e.format_message(), sys.argv[1:]
            vals = [(args[i - 1], a) for i, a in enumerate(args) if i and a.lower() in ("true", "false", "yes", "no")
                    and args[i - 1].startswith("--")]
            if "unexpected extra argument" in msg and vals:
                flag, val = vals[0]
                msg += f"; {flag} is a flag and takes no value: write {flag} alone" + (
                    " (or leave it out for off)" if val.lower() in ("true", "yes") else ", or leave it out")
            print(f"error: {msg}{where}", file=sys.stderr)
            sys.exit(2)
        if "Abort" in kinds:
            print("stopped (Ctrl-C)", file=sys.stderr)
            sys.exit(130)
        if "Exit" in kinds:
            sys.exit(getattr(e, "exit_code", 0))
        raise
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":  # python -m chanscope.cli.app (torchrun, the tests)
    main()
