"""Finding an event's branch in a dispatch, and proving it is code the server runs.

Shared by the fixes that rewrite one arm of an `if isinstance(<event>, <Class>):`
chain in a method of the protocol class. A rewrite is only right when the method
it changes is the one the server calls: a plain method (no decorator in the way of
its `self`), of a class defined once at the top of the module, that `H2Protocol`
(what hypercorn.protocol and anycorn.protocol import) is or derives from, defined
once in that class and not overridden by a subclass, with the branch reachable and
first in its chain for the event. Each check raises `Refusal` with what it expected
and what it found; the fix turns that into its UnrecognisedStructureError.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import libcst as cst

from .._errors import UnrecognisedStructureError
from ._syntax import (
    base_classes,
    bindings_of,
    binds_to,
    bound_names,
    class_names,
    constructs,
    dotted,
    first_parameter,
    identifier,
    imports_package,
    jump_before,
    method_call,
    module_bindings,
    module_classes,
    module_statements,
    name_uses,
    self_attribute,
    statement_names,
    statements_before,
    subclasses,
    touched_beyond_a_size_test,
    walk,
)
from ._tree import children, path_to, walk_with_ancestors

#: The protocol class both servers' packages import from protocol/h2.py.
SERVED = "H2Protocol"
#: What h2 hands the server's events in: the one call whose result the dispatch must see whole.
RECEIVE = "receive_data"


class Refusal(Exception):
    """A proof obligation failed: what was expected, and what was found instead."""

    def __init__(self, expected: str, found: str = "") -> None:
        super().__init__(expected)
        self.expected = expected
        self.found = found


# --- find ----------------------------------------------------------------------


@dataclass(frozen=True)
class Branch:
    """One `if isinstance(<event>, <event class>):` branch and what encloses it."""

    event: str
    node: cst.If
    #: From the module down to the branch's parent.
    ancestors: tuple[cst.CSTNode, ...]

    @property
    def where(self) -> str:
        return where(self.ancestors)

    @property
    def method(self) -> cst.FunctionDef | None:
        functions = [n for n in self.ancestors if isinstance(n, cst.FunctionDef)]
        return functions[-1] if functions else None

    @property
    def subject(self) -> str | None:
        test = self.node.test
        assert isinstance(test, cst.Call)
        return dotted(test.args[0].value)


class BranchFinder:
    """Collects every branch for one of `events`; refuses shapes that share or hide one
    (a tuple of classes naming one of them, a match/case on one of them)."""

    def __init__(self, module: cst.Module, fix: str, events: tuple[str, ...]) -> None:
        self.module = module
        self.fix = fix
        self.events = events
        self.branches: list[Branch] = []
        self._stack: list[cst.CSTNode] = []

    def find(self) -> list[Branch]:
        # One walk over shared nodes: `module.visit` would rebuild the whole tree.
        for node, ancestors in walk_with_ancestors(self.module):
            kind = type(node)  # most nodes are neither: see _tree.py on LibCST's classes
            if kind is not cst.If and kind is not cst.MatchCase:
                continue
            self._stack = ancestors
            if isinstance(node, cst.If):
                event = self._event_class(node.test)
                if event is not None:
                    self.branches.append(Branch(event, node, tuple(ancestors)))
            elif isinstance(node, cst.MatchCase) and names_any(node.pattern, self.events):
                raise UnrecognisedStructureError(
                    self.fix,
                    where(ancestors),
                    "`if isinstance(<event>, <h2 event>):` branches (not match/case)",
                    self.module.code_for_node(node).strip("\n"),
                )
        return self.branches

    def _event_class(self, test: cst.BaseExpression) -> str | None:
        """The event a test selects alone; refuses a test that shares it."""
        if not (isinstance(test, cst.Call) and dotted(test.func) == "isinstance"):
            return None
        if len(test.args) != 2 or any(arg.keyword or arg.star for arg in test.args):
            return None
        classes = test.args[1].value
        if isinstance(classes, cst.Tuple):
            if names_any(classes, self.events):
                raise UnrecognisedStructureError(
                    self.fix,
                    where(self._stack),
                    "a branch for one h2 event class (a shared branch cannot be guarded "
                    "for one of them)",
                    self.module.code_for_node(test),
                )
            return None
        name = class_name(classes)
        return name if name in self.events else None


def find_branches(module: cst.Module, fix: str, events: tuple[str, ...]) -> list[Branch]:
    return BranchFinder(module, fix, events).find()


def only_branch(fix: str, event: str, branches: Sequence[Branch]) -> Branch:
    """The one branch for `event` among `branches` (at least one): with two, which one the
    server runs for the event is a guess."""
    if len(branches) > 1:
        raise UnrecognisedStructureError(
            fix,
            "<module>",
            f"one {event} branch",
            f"{len(branches)}: in {', '.join(b.where for b in branches)}",
        )
    return branches[0]


# --- prove -----------------------------------------------------------------------


@dataclass(frozen=True)
class Live:
    """A method proven to be the one the server runs, and its `self`."""

    cls: cst.ClassDef
    method: cst.FunctionDef
    receiver: str


class LiveMethods:
    """The checks that a branch's method is the one the server runs, for one module."""

    def __init__(
        self, module: cst.Module, receiver_role: str = "the protocol object the rewrite acts on"
    ) -> None:
        self.module = module
        #: What the method's `self` is to the fix, for the refusal when it is rebound.
        self.receiver_role = receiver_role
        self.bindings = module_bindings(module)
        self.classes = module_classes(module)
        #: Dispatch methods whose every caller is proven to hand them h2's events.
        self._reach_proven: set[int] = set()
        # Classes the module defines where it runs (not those local to a function).
        self.every_class = [s for s in module_statements(module) if isinstance(s, cst.ClassDef)]
        # Walking a class's methods is the costly part: once per class.
        self._writes: dict[int, list[Write]] = {}

    def family(self, cls: cst.ClassDef) -> list[cst.ClassDef]:
        """The class, its bases and its subclasses in the module (the instance may be any)."""
        return [cls, *base_classes(self.classes, cls), *subclasses(self.classes, cls)]

    def family_writes(self, cls: cst.ClassDef, attribute: str) -> list[Write]:
        """The writes to `self.<attribute>` in the methods of the class family."""
        for member in self.family(cls):
            if id(member) not in self._writes:
                self._writes[id(member)] = list(writes(member))
        return [
            write
            for member in self.family(cls)
            for write in self._writes[id(member)]
            if write.attribute == attribute
        ]

    def h2_connection(self, cls: cst.ClassDef, attribute: str) -> None:
        """`self.<attribute>` is assigned once in the class family, an h2 `H2Connection`
        (as the module's imports show), so its methods are h2's."""
        found = self.family_writes(cls, attribute)
        value = found[0].value if len(found) == 1 else None
        if value is None or not constructs(self.bindings, value, "h2.connection", "H2Connection"):
            raise Refusal(
                f"`self.{attribute}` assigned once, an h2 H2Connection "
                "(h2.connection.H2Connection(...) as the module imports it)",
                "; ".join(self.module.code_for_node(w.node).strip() for w in found)
                or f"no assignment to self.{attribute}",
            )

    def h2_names_the_package(self, method: cst.FunctionDef, reads: str) -> None:
        """Inserted code that reads `reads` (`h2.errors`, `h2.connection.<name>`) reads the
        h2 package: `h2` is bound only by plain `import h2...` statements, never in
        `method`, and `import h2.connection` at module level loads both (h2.connection
        imports h2.errors)."""
        package = "h2"
        found = [
            self.module.code_for_node(node).strip()
            for node in self.bindings.get(package, [])
            if not imports_package(node, package)
        ]
        found += [
            f"{package} bound by a module-level {type(statement).__name__.lower()}"
            for statement in module_statements(self.module)
            if isinstance(statement, (cst.For, cst.While, cst.With))
            and package in bound_names(statement)
        ]
        found += [
            f"global {package}"
            for node in walk(self.module)
            if isinstance(node, cst.Global)
            and any(identifier(n.name) == package for n in node.names)
        ]
        if package in bound_names(method.body) | parameters(method):
            found.append(f"{package} bound in {identifier(method.name)}")
        if found:
            raise Refusal(
                "`h2` bound only by `import h2` / `import h2.<module>` statements (the "
                f"rewrite reads {reads} through it)",
                "; ".join(found),
            )
        if not any(
            isinstance(small, cst.Import)
            and any(dotted(a.name) == "h2.connection" and a.asname is None for a in small.names)
            for statement in module_statements(self.module)
            if isinstance(statement, cst.SimpleStatementLine)
            for small in statement.body
        ):
            raise Refusal(
                f"`import h2.connection` at module level (it loads {reads}, which the "
                "rewrite reads)",
                "no such import",
            )

    def prove(self, branch: Branch) -> Live:
        """Every check on the method holding `branch`, in the order their refusals read best."""
        cls, method = self.method_of_module_class(branch.ancestors)
        self.undecorated(method)
        receiver = self.receiver(method)
        self.class_defined_once(cls)
        self.method_defined_once(cls, method)
        self.not_overridden(cls, method)
        self.served_class_uses_it(cls)
        self.branch_is_reachable(branch, method)
        return Live(cls, method, receiver)

    # Each check: one obligation, its refusal beside it.

    def method_of_module_class(
        self, ancestors: Sequence[cst.CSTNode]
    ) -> tuple[cst.ClassDef, cst.FunctionDef]:
        """The code below `ancestors` (from the module down) is directly in a method (the
        rewrite acts on that method's `self`), of a class directly in the module (the one
        module-level name the server can reach)."""
        scopes = [
            i for i, n in enumerate(ancestors) if isinstance(n, (cst.ClassDef, cst.FunctionDef))
        ]
        if (
            len(scopes) < 2
            or not isinstance(ancestors[scopes[-1]], cst.FunctionDef)
            or not isinstance(ancestors[scopes[-2]], cst.ClassDef)
            or scopes[-1] != scopes[-2] + 2  # the def directly in the class body
        ):
            raise Refusal("the branch directly inside a method of a class")
        cls, method = ancestors[scopes[-2]], ancestors[scopes[-1]]
        assert isinstance(cls, cst.ClassDef)
        assert isinstance(method, cst.FunctionDef)
        if scopes[-2] != 1 or not isinstance(ancestors[0], cst.Module):
            raise Refusal("the class at the top level of the module")
        return cls, method

    def undecorated(self, method: cst.FunctionDef) -> None:
        if method.decorators:
            raise Refusal(
                "an undecorated method, a plain method (a decorator may make its first "
                "parameter something other than the protocol object, or replace the method)",
                f"@{self.module.code_for_node(method.decorators[0].decorator)}",
            )

    def receiver(self, method: cst.FunctionDef) -> str:
        receiver = first_parameter(method)
        if receiver is None:
            raise Refusal("a method with a `self` parameter")
        if receiver in bound_names(method.body):
            raise Refusal(
                f"`{receiver}` never rebound in {identifier(method.name)} (it names "
                f"{self.receiver_role})",
                f"an assignment to {receiver} in {identifier(method.name)}",
            )
        return receiver

    def class_defined_once(self, cls: cst.ClassDef) -> None:
        name = identifier(cls.name)
        if self.classes.get(name) is not cls:
            raise Refusal(
                f"one definition of class {name} in the module (the class defined once: with "
                "two, which one runs depends on how the module executes)",
                f"class {name} bound {len(self.bindings.get(name, []))} times",
            )

    def method_defined_once(self, cls: cst.ClassDef, method: cst.FunctionDef) -> None:
        name = identifier(method.name)
        count = list(class_names(cls)).count(name)
        if count != 1:
            raise Refusal(
                f"one definition of {name} in its class (another one may be the one that runs)",
                f"{name} bound {count} times in class {identifier(cls.name)}",
            )

    def not_overridden(self, cls: cst.ClassDef, method: cst.FunctionDef) -> None:
        # Another class with a method of that name may be a subclass that overrides it:
        # then the server could run that one, and this branch would be dead.
        name = identifier(method.name)
        owners = [
            identifier(other.name) for other in self.every_class if name in class_names(other)
        ]
        if owners != [identifier(cls.name)]:
            raise Refusal(
                f"{name} defined in one class of the module", f"defined in {', '.join(owners)}"
            )

    def served_class_uses_it(self, cls: cst.ClassDef) -> None:
        """The class the package serves (`H2Protocol`, which hypercorn.protocol and
        anycorn.protocol import) is this class or a subclass of it."""
        name = identifier(cls.name)
        family = {name, *(identifier(sub.name) for sub in subclasses(self.classes, cls))}
        if not binds_to(self.bindings, SERVED, family):
            bindings = self.bindings.get(SERVED, [])
            raise Refusal(
                f"{SERVED} (the class the server imports) to be {name} or a subclass of it",
                self.module.code_for_node(bindings[0]).strip()
                if len(bindings) == 1
                else f"{len(bindings)} bindings of {SERVED} in the module",
            )

    def branch_is_reachable(self, branch: Branch, method: cst.FunctionDef) -> None:
        path = [*branch.ancestors, branch.node]
        jump = jump_before(path, path.index(method))
        if jump is not None:
            raise Refusal(
                "the branch reachable: no return, raise, break or continue before it",
                self.module.code_for_node(jump).strip(),
            )

    def first_arm_for_the_event(self, branch: Branch) -> None:
        """Every earlier arm of the if/elif chain tests the event's class, so none of them
        can take this event first (the rewrite would then change code that never runs),
        and nothing before the chain can skip it."""
        self.nothing_before_skips_it(branch)
        subject = branch.subject
        for arm in earlier_arms(branch):
            test = arm.test
            if not (
                subject is not None
                and isinstance(test, cst.Call)
                and dotted(test.func) == "isinstance"
                and len(test.args) == 2
                and dotted(test.args[0].value) == subject
            ):
                raise Refusal(
                    f"only isinstance({subject}, ...) tests before the {branch.event} branch "
                    "(anything else may take the event first)",
                    self.module.code_for_node(test),
                )

    def reachable_in_branch(self, branch: Branch, statement: cst.CSTNode, what: str) -> None:
        """No return, raise, break or continue before `statement` in the branch: after one,
        the statement is dead, and whatever runs instead is what the server does."""
        jump = jump_before(node_path(branch.node, statement))
        if jump is not None:
            raise Refusal(
                f"{what} reachable: no return, raise, break or continue before it in the branch",
                self.module.code_for_node(jump).strip(),
            )

    def nothing_before_skips_it(self, branch: Branch) -> None:
        """No statement before the dispatch can jump past it for the event at hand (a
        `continue` for some events, a `return` on a condition): the branch would then not
        run for every event of its class, and what the server does instead stays
        unrepaired. Before the loop over the events (`if not events: return`) nothing is
        skipped for one event, so the check starts in the innermost loop's body, or in the
        method's body when the dispatch is not in a loop."""
        path = [*branch.ancestors, branch.node]
        start = next((i for i, n in enumerate(path) if n is branch.method), 0)
        loops = [i for i in range(start, len(path)) if isinstance(path[i], (cst.For, cst.While))]
        if loops:
            start = loops[-1]
        # Unlike jump_before (a jump on its own line, which always runs), a jump anywhere
        # in an earlier statement counts: under a condition it skips the branch for some events.
        for statement in statements_before(path, start):
            if _jump_in(statement) is not None:
                raise Refusal(
                    f"nothing before the {branch.event} branch that can skip it (a "
                    "return, raise, break or continue)",
                    self.module.code_for_node(statement).strip(),
                )

    def events_reach_the_dispatch(self, branch: Branch, live: Live) -> None:
        """Every event h2 reports reaches the branch: the dispatch loops over a parameter
        of its method that nothing else in the method touches, and every call of the
        method hands it what `<connection>.receive_data()` returned, untouched. An event
        dropped on the way (a list filtered before the loop, or by the caller) never
        reaches the branch: whatever the fix changes there, the server goes on doing what
        it did for that event (late DATA never acknowledged, a request during shutdown
        never answered), and "repaired" would be untrue."""
        if branch.subject is None:
            raise Refusal("the dispatch on a plain name (`isinstance(event, ...)`)")
        self.events_reach(branch.ancestors, branch.subject, live)

    def events_reach(self, ancestors: Sequence[cst.CSTNode], subject: str, live: Live) -> None:
        """`events_reach_the_dispatch` for a branch below `ancestors` testing `subject`."""
        method = live.method
        if id(method) in self._reach_proven:
            return
        name = identifier(method.name)
        loop = next((n for n in reversed(ancestors) if isinstance(n, cst.For)), None)
        if (
            loop is None
            or dotted(loop.target) != subject
            or not isinstance(loop.iter, cst.Name)
            or identifier(loop.iter) not in parameters(method)
        ):
            found = "" if loop is None else self.module.code_for_node(loop.target)
            raise Refusal(
                f"the branch in a `for {subject} in <events>:` loop over a parameter of {name}",
                f"for {found} in {self.module.code_for_node(loop.iter)}" if loop else "no loop",
            )
        events = identifier(loop.iter)
        other = touched_beyond_a_size_test(method.body, events, loop.iter)
        if other is not None:
            raise Refusal(
                f"`{events}` only looped over in {name}, or tested (`if not {events}:`, "
                f"`len({events})`): the dispatch must see every event h2 reports",
                self.module.code_for_node(other).strip(),
            )
        callers = 0
        for node, ancestors in walk_with_ancestors(self.module):
            if not (isinstance(node, cst.Name) and identifier(node) == name):
                continue
            parent = ancestors[-1] if ancestors else None
            if parent is method:
                continue  # the definition itself
            self.hands_it_what_h2_received(live, node, list(ancestors))
            callers += 1
        if not callers:
            raise Refusal(f"a call of {name} with the events `.{RECEIVE}()` returned", "none")
        self._reach_proven.add(id(method))

    def hands_it_what_h2_received(
        self, live: Live, name: cst.Name, ancestors: list[cst.CSTNode]
    ) -> None:
        """One reference to the dispatch method: `[await] <self>.<method>(<events>)` in a
        method of the same class, where `<events>` is bound once, to
        `<self>.<h2 connection>.receive_data(...)`, and read only by this call."""
        method_name = identifier(live.method.name)
        expected = (
            f"every use of {method_name} a call `<self>.{method_name}(<events>)` in a method "
            f"of {identifier(live.cls.name)}, with `<events> = <self>.<connection>."
            f"{RECEIVE}(...)` bound once and read by that call alone"
        )
        attribute = ancestors[-1] if ancestors else None
        call = ancestors[-2] if len(ancestors) > 1 else None
        functions = [n for n in ancestors if isinstance(n, cst.FunctionDef)]
        caller = functions[-1] if functions else None
        receiver = first_parameter(caller) if caller is not None else None
        statement = next(
            (n for n in reversed(ancestors) if isinstance(n, cst.SimpleStatementLine)), name
        )
        found = self.module.code_for_node(statement).strip()
        if (
            not isinstance(attribute, cst.Attribute)
            or attribute.attr is not name
            or not isinstance(call, cst.Call)
            or call.func is not attribute
            or caller is None
            or not any(n is caller for n in live.cls.body.body)
            or receiver is None
            or dotted(attribute.value) != receiver
            or len(call.args) != 1
            or call.args[0].keyword is not None
            or call.args[0].star
            or not isinstance(call.args[0].value, cst.Name)
        ):
            raise Refusal(expected, found)
        events = identifier(call.args[0].value)
        received = [
            node.value
            for node in walk(caller.body)
            if isinstance(node, cst.Assign)
            and len(node.targets) == 1
            and dotted(node.targets[0].target) == events
        ]
        value = received[0] if len(received) == 1 else None
        receive = method_call(value) if value is not None else None
        connection = (
            self_attribute(receive[0], receiver)
            if receive is not None and receive[1] == RECEIVE
            else None
        )
        if (
            connection is None
            or bindings_of(caller.body).count(events) != 1
            or len(name_uses(caller.body, events)) != 2  # the assignment and this call
            or events in parameters(caller)
        ):
            raise Refusal(expected, found)
        self.h2_connection(live.cls, connection)

    def no_earlier_arm_names_it(self, branch: Branch, bases: tuple[str, ...] = ()) -> None:
        """No earlier arm tests the event's own class, or a base class it is known to
        derive from (`bases`): that arm would take the event first."""
        taken = (branch.event, *bases)
        for arm in earlier_arms(branch):
            if names_any(arm.test, taken):
                raise Refusal(
                    f"no test before the {branch.event} branch that takes a {branch.event} "
                    f"({', '.join(taken)})",
                    self.module.code_for_node(arm.test),
                )


# --- the checks trailers and send_state make in place of LiveMethods' stricter ones ----
#
# LiveMethods.method_defined_once counts every binding of the name in the class (an
# earlier `stream_send = None` too) and LiveMethods.not_overridden refuses any other class
# of the module defining the name; these two look only at later bindings and at
# subclasses. Making trailers and send_state stricter would change their verdicts, so both
# forms stay. LiveMethods.receiver makes the same check as `receiver_never_reassigned`
# but its wording (`self` never rebound in <method>) is what the newer fixes' refusals
# say, and this one's is what trailers' and send_state's say.


def rebound_later(cls: cst.ClassDef, method: cst.FunctionDef) -> bool:
    """A later statement of the class body binds the method's name: this one never runs."""
    statements: list[cst.CSTNode] = list(cls.body.body)
    position = next((i for i, s in enumerate(statements) if s is method), len(statements))
    return identifier(method.name) in statement_names(statements[position + 1 :])


def not_replaced_later(cls: cst.ClassDef, method: cst.FunctionDef) -> None:
    name = identifier(method.name)
    if rebound_later(cls, method):
        raise Refusal(
            f"{name} defined once in class {identifier(cls.name)} (a later definition "
            "or assignment replaces this one, which then never runs)",
            f"{name} bound again later in the class body",
        )


def not_overridden_in(
    subclasses: Sequence[cst.ClassDef], cls: cst.ClassDef, method: cst.FunctionDef
) -> None:
    """None of `subclasses` (the fix's own view of them) defines the method's name."""
    name = identifier(method.name)
    for subclass in subclasses:
        if name in class_names(subclass):
            raise Refusal(
                f"{identifier(cls.name)}.{name} not overridden in a subclass in the module "
                "(the server may run the override instead)",
                f"class {identifier(subclass.name)} defines {name}",
            )


def receiver_never_reassigned(method: cst.FunctionDef, where: str) -> str:
    receiver = first_parameter(method)
    if receiver is None:
        raise Refusal("a method with a `self` parameter")
    if receiver in bound_names(method.body):
        raise Refusal(
            f"`{receiver}` never reassigned in the method (it names the protocol object)",
            f"an assignment to {receiver} in {where}",
        )
    return receiver


# --- what the class family writes to `self.<attribute>` ------------------------------


@dataclass(frozen=True)
class Write:
    """One write to `self.<attribute>` in a method of the class family."""

    attribute: str
    #: The method the write is in.
    method: cst.FunctionDef
    #: The Assign, AnnAssign, AugAssign, For, WithItem or Del node that writes it.
    node: cst.CSTNode
    #: The value assigned (the increment for `+=`), None when the fix cannot see it
    #: (a tuple or loop target, `with ... as`, `del`).
    value: cst.BaseExpression | None


def writes(cls: cst.ClassDef) -> Iterator[Write]:
    """Every write to `<self>.<attr>` in the methods of `cls` (`<self>` their first parameter)."""
    for method in cls.body.body:
        if not isinstance(method, cst.FunctionDef):
            continue
        receiver = first_parameter(method)
        if receiver is None:
            continue
        for node in walk(method.body):
            if isinstance(node, cst.Assign):
                for target in node.targets:
                    plain = isinstance(target.target, cst.Attribute)
                    for attribute in _written(target.target, receiver):
                        yield Write(attribute, method, node, node.value if plain else None)
            elif isinstance(node, (cst.AnnAssign, cst.AugAssign)):
                for attribute in _written(node.target, receiver):
                    yield Write(attribute, method, node, node.value)
            elif isinstance(node, (cst.For, cst.CompFor)):
                for attribute in _written(node.target, receiver):
                    yield Write(attribute, method, node, None)
            elif isinstance(node, cst.WithItem) and node.asname is not None:
                for attribute in _written(node.asname.name, receiver):
                    yield Write(attribute, method, node, None)
            elif isinstance(node, cst.Del):
                for attribute in _written(node.target, receiver):
                    yield Write(attribute, method, node, None)


def _written(target: cst.BaseExpression, receiver: str) -> list[str]:
    """`attr` for each `<receiver>.attr` a target writes (`a, self.x = ...` included)."""
    if isinstance(target, (cst.Tuple, cst.List)):
        return [a for element in target.elements for a in _written(element.value, receiver)]
    if isinstance(target, cst.StarredElement):
        return _written(target.value, receiver)
    attribute = self_attribute(target, receiver)
    return [] if attribute is None else [attribute]


# --- helpers on nodes ------------------------------------------------------------


def where(ancestors: Sequence[cst.CSTNode]) -> str:
    names = [
        identifier(n.name) for n in ancestors if isinstance(n, (cst.ClassDef, cst.FunctionDef))
    ]
    return ".".join(names) or "<module>"


def class_name(node: cst.BaseExpression) -> str | None:
    """`C` for `C` or `<anything>.C`."""
    if isinstance(node, cst.Name):
        return identifier(node)
    if isinstance(node, cst.Attribute):
        return identifier(node.attr)
    return None


def names_any(node: cst.CSTNode, names: tuple[str, ...]) -> bool:
    return any(isinstance(n, cst.Name) and identifier(n) in names for n in walk(node))


def parameters(method: cst.FunctionDef) -> set[str]:
    """The names of a function's parameters (they are bound in its body)."""
    return {identifier(p.name) for p in walk(method.params) if isinstance(p, cst.Param)}


def _jump_in(node: cst.CSTNode) -> cst.CSTNode | None:
    """A return, raise, break or continue in `node`, outside functions and classes it defines."""
    if isinstance(node, (cst.Return, cst.Raise, cst.Break, cst.Continue)):
        return node
    if isinstance(node, (cst.FunctionDef, cst.ClassDef, cst.Lambda)):
        return None
    for child in children(node):
        jump = _jump_in(child)
        if jump is not None:
            return jump
    return None


def earlier_arms(branch: Branch) -> Iterator[cst.If]:
    """The arms before `branch` in its if/elif chain (also through `else:` holding only an `if`)."""
    path = [*branch.ancestors, branch.node]
    child_at = len(path) - 1
    while child_at > 0:
        parent = path[child_at - 1]
        if isinstance(parent, cst.If) and parent.orelse is path[child_at]:
            yield parent
            child_at -= 1
        elif (
            child_at >= 3
            and isinstance(parent, cst.IndentedBlock)
            and len(parent.body) == 1
            and isinstance(path[child_at - 2], cst.Else)
            and isinstance(path[child_at - 3], cst.If)
        ):
            arm = path[child_at - 3]
            assert isinstance(arm, cst.If)
            yield arm
            child_at -= 3
        else:
            return


def node_path(root: cst.CSTNode, target: cst.CSTNode) -> list[cst.CSTNode]:
    """The nodes from `root` down to `target`, both included ([] if it is not below)."""
    return path_to(root, target) or []


def branch_code(module: cst.Module, branch: Branch) -> str:
    """The branch's own arm as text (without the arms after it), for refusals."""
    return module.code_for_node(branch.node.with_changes(orelse=None)).strip("\n")
