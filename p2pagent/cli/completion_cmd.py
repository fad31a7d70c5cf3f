"""``p2pagentctl completion bash|zsh|fish``: a shell completion script, made from the parser
itself so it never lists a command or flag the CLI does not have.

Install with ``source <(p2pagentctl completion bash)`` (in ~/.bashrc), ``p2pagentctl
completion zsh > "${fpath[1]}/_p2pagentctl"``, or ``p2pagentctl completion fish >
~/.config/fish/completions/p2pagentctl.fish``.

Each script holds a table from a command path (``p2pagentctl state``) to the words that may
follow it (its subcommands and flags); completing walks the words typed so far down that
table, skipping flags, and offers the words of the deepest path reached.
"""

from __future__ import annotations

import argparse
from typing import Any

PROG = "p2pagentctl"
SHELLS = ("bash", "zsh", "fish")


def register(sub: Any) -> None:
    p = sub.add_parser("completion", help="print a shell completion script (bash, zsh, fish)")
    p.add_argument("shell", choices=SHELLS)
    p.set_defaults(handler=_completion)


def command_tree(parser: argparse.ArgumentParser, path: str = PROG) -> dict[str, list[str]]:
    """Command path -> the subcommands and flags that may follow it."""
    words: list[str] = []
    tree: dict[str, list[str]] = {path: words}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                words.append(name)
                tree.update(command_tree(child, f"{path} {name}"))
        elif action.option_strings:
            words += [o for o in action.option_strings if o.startswith("--")]
        elif action.choices:  # a positional with fixed values (``completion SHELL``)
            words += [str(c) for c in action.choices]
    return tree


def script(shell: str, tree: dict[str, list[str]]) -> str:
    if shell == "bash":
        return _bash(tree)
    if shell == "zsh":
        return _zsh(tree)
    return _fish(tree)


def _bash(tree: dict[str, list[str]]) -> str:
    entries = "\n".join(f'    ["{path}"]="{" ".join(words)}"' for path, words in tree.items())
    return f"""# bash completion for {PROG}: source <({PROG} completion bash)
declare -gA _p2pagentctl_tree=(
{entries}
)
_p2pagentctl() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" path="{PROG}" w i
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${{COMP_WORDS[i]}}"
        [[ $w == -* ]] && continue
        [[ -n "${{_p2pagentctl_tree["$path $w"]+x}}" ]] && path="$path $w"
    done
    COMPREPLY=($(compgen -W "${{_p2pagentctl_tree["$path"]}}" -- "$cur"))
}}
complete -o default -F _p2pagentctl {PROG}
"""


def _zsh(tree: dict[str, list[str]]) -> str:
    entries = "\n".join(f"    '{path}' '{' '.join(words)}'" for path, words in tree.items())
    return f"""#compdef {PROG}
# zsh completion for {PROG}: {PROG} completion zsh > "${{fpath[1]}}/_{PROG}"
typeset -gA _p2pagentctl_tree
_p2pagentctl_tree=(
{entries}
)
_p2pagentctl() {{
    local node="{PROG}" w
    for w in ${{words[2,CURRENT-1]}}; do
        [[ $w == -* ]] && continue
        (( ${{+_p2pagentctl_tree[$node $w]}} )) && node="$node $w"
    done
    compadd -- ${{=_p2pagentctl_tree[$node]}}
}}
compdef _p2pagentctl {PROG}
"""


def _fish(tree: dict[str, list[str]]) -> str:
    cases = "\n".join(
        f"        case '{path}'\n            printf '%s\\n' {' '.join(words)}"
        for path, words in tree.items()
    )
    return f"""# fish completion for {PROG}:
# {PROG} completion fish > ~/.config/fish/completions/{PROG}.fish
function __p2pagentctl_words
    switch "$argv"
{cases}
        case '*'
            return 1
    end
end
function __p2pagentctl_complete
    set -l node {PROG}
    for w in (commandline -opc)[2..-1]
        string match -q -- '-*' $w; and continue
        __p2pagentctl_words "$node $w" >/dev/null; and set node "$node $w"
    end
    __p2pagentctl_words $node
end
complete -c {PROG} -f -a '(__p2pagentctl_complete)'
"""


async def _completion(args: argparse.Namespace) -> int:
    from p2pagent.cli.ctl import parser

    print(script(args.shell, command_tree(parser())), end="")
    return 0
