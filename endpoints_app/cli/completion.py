"""Shell completion scripts for ``modelfleet completion bash|zsh|fish``, built from the argument parser.

Every command path (``""``, ``"serving-endpoints"``, ``"serving-endpoints create"``…) gets its
words: subcommands, flags, the flags that take a value, and the choices of each flag or positional
that has them. The scripts hold those words as data, so they complete without running
``modelfleet`` (which would cost a Python start per Tab): a new verb shows up after the script is
generated again. Endpoint names, which only the server knows, are not completed.

zsh runs the bash script through ``bashcompinit``; fish gets its own script over the same words.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass, field

PROG = "modelfleet"
SHELLS = ("bash", "zsh", "fish")


@dataclass
class CommandWords:
    """What may follow one command path."""

    commands: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    value_flags: list[str] = field(default_factory=list)
    flag_choices: dict[str, list[str]] = field(default_factory=dict)
    arg_choices: list[str] = field(default_factory=list)


def command_words(parser: argparse.ArgumentParser) -> dict[str, CommandWords]:
    """Each command path of ``parser`` (space-separated, ``""`` for the top) and its words."""
    found: dict[str, CommandWords] = {}

    def walk(node: argparse.ArgumentParser, path: str) -> None:
        words = found.setdefault(path, CommandWords())
        for action in node._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    words.commands.append(name)
                    walk(sub, f"{path} {name}".strip())
            elif action.help == argparse.SUPPRESS:
                continue
            elif action.option_strings:
                words.flags.extend(action.option_strings)
                if action.nargs != 0:
                    words.value_flags.extend(action.option_strings)
                    if action.choices:
                        for flag in action.option_strings:
                            words.flag_choices[flag] = [str(c) for c in action.choices]
            elif action.choices:
                words.arg_choices.extend(str(c) for c in action.choices)

    walk(parser, "")
    return found


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    words = command_words(parser)
    if shell == "bash":
        return bash_script(words)
    if shell == "zsh":
        return zsh_script(words)
    if shell == "fish":
        return fish_script(words)
    raise ValueError(f"no completion for {shell!r} (use one of {', '.join(SHELLS)})")


def _cases(words: dict[str, CommandWords]) -> list[tuple[str, list[str]]]:
    """``(key, words)`` rows: ``path|cmds``, ``path|flags``, ``path|valueflags``, ``path|args``, ``path|=FLAG``."""
    rows: list[tuple[str, list[str]]] = []
    for path, entry in words.items():
        for kind, values in (
            ("cmds", entry.commands),
            ("flags", entry.flags),
            ("valueflags", entry.value_flags),
            ("args", entry.arg_choices),
        ):
            if values:
                rows.append((f"{path}|{kind}", values))
        for flag, choices in entry.flag_choices.items():
            rows.append((f"{path}|={flag}", choices))
    return rows


_BASH_BODY = r"""
_modelfleet_completion() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="" cmdpath="" word i values
    (( COMP_CWORD > 0 )) && prev="${COMP_WORDS[COMP_CWORD-1]}"
    # The command path: the words so far that name a subcommand of the path before them.
    for (( i = 1; i < COMP_CWORD; i++ )); do
        word="${COMP_WORDS[i]}"
        [[ "$word" == -* ]] && continue
        if [[ " $(_modelfleet_words "$cmdpath|cmds") " == *" $word "* ]]; then
            cmdpath="${cmdpath:+$cmdpath }$word"
        fi
    done
    COMPREPLY=()
    # --json @file: '@' splits words in bash's default COMP_WORDBREAKS; file names follow it.
    [[ "$prev" == "@" ]] && return 0
    if [[ "$prev" == -* && " $(_modelfleet_words "$cmdpath|valueflags") " == *" $prev "* ]]; then
        values="$(_modelfleet_words "$cmdpath|=$prev")"
        if [[ -n "$values" ]]; then
            COMPREPLY=( $(compgen -W "$values" -- "$cur") )
        elif [[ "$cur" == @* ]]; then
            COMPREPLY=( $(compgen -P @ -f -- "${cur#@}") )
        fi
        return 0  # no choices: file names (complete -o default)
    fi
    if [[ "$cur" == -* ]]; then
        COMPREPLY=( $(compgen -W "$(_modelfleet_words "$cmdpath|flags")" -- "$cur") )
    else
        values="$(_modelfleet_words "$cmdpath|cmds") $(_modelfleet_words "$cmdpath|args")"
        COMPREPLY=( $(compgen -W "$values" -- "$cur") )
    fi
    return 0
}
complete -o default -F _modelfleet_completion modelfleet
"""


def _bash_words_function(words: dict[str, CommandWords]) -> str:
    lines = ["_modelfleet_words() {", '    case "$1" in']
    for key, values in _cases(words):
        lines.append(f"        {shlex.quote(key)}) echo {shlex.quote(' '.join(values))} ;;")
    lines += ["    esac", "}"]
    return "\n".join(lines)


def bash_script(words: dict[str, CommandWords]) -> str:
    header = (
        f"# bash completion for {PROG}. Load it with:  source <({PROG} completion bash)\n"
        f"# or save it:  {PROG} completion bash > ~/.local/share/bash-completion/completions/{PROG}\n"
    )
    return header + _bash_words_function(words) + "\n" + _BASH_BODY.lstrip("\n")


def zsh_script(words: dict[str, CommandWords]) -> str:
    # `cmdpath`, not `path`: zsh ties $path to $PATH.
    header = (
        f"#compdef {PROG}\n"
        f"# zsh completion for {PROG}. Load it from ~/.zshrc with:  source <({PROG} completion zsh)\n"
        "if ! (( $+functions[compdef] )); then autoload -U +X compinit && compinit; fi\n"
        "autoload -U +X bashcompinit && bashcompinit\n"
    )
    return header + _bash_words_function(words) + "\n" + _BASH_BODY.lstrip("\n")


_FISH_BODY = r"""
function __modelfleet_complete
    set -l tokens (commandline -opc)
    set -l cur (commandline -ct)
    set -l prev $tokens[-1]
    set -e tokens[1]
    set -l cmdpath ''
    for word in $tokens
        string match -q -- '-*' $word; and continue
        if contains -- $word (__modelfleet_words "$cmdpath|cmds")
            set cmdpath (string trim -- "$cmdpath $word")
        end
    end
    if string match -q -- '-*' $prev; and contains -- $prev (__modelfleet_words "$cmdpath|valueflags")
        set -l values (__modelfleet_words "$cmdpath|=$prev")
        if test (count $values) -gt 0
            printf '%s\n' $values
        else
            __fish_complete_path $cur
        end
        return
    end
    if string match -q -- '-*' $cur
        __modelfleet_words "$cmdpath|flags"
    else
        __modelfleet_words "$cmdpath|cmds"
        __modelfleet_words "$cmdpath|args"
    end
end
complete -c modelfleet -f -a '(__modelfleet_complete)'
"""


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def fish_script(words: dict[str, CommandWords]) -> str:
    lines = [
        f"# fish completion for {PROG}. Load it with:  {PROG} completion fish | source",
        f"# or save it:  {PROG} completion fish > ~/.config/fish/completions/{PROG}.fish",
        "function __modelfleet_words",
        "    switch $argv[1]",
    ]
    for key, values in _cases(words):
        lines.append(f"        case {_fish_quote(key)}")
        lines.append("            printf '%s\\n' " + " ".join(_fish_quote(v) for v in values))
    lines += ["    end", "end"]
    return "\n".join(lines) + "\n" + _FISH_BODY.lstrip("\n")
