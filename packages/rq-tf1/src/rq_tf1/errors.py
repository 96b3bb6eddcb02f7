"""rq-tf1's errors (all rq_common.RqError): each names the problem and the fix."""

from rq_common.errors import RqError


class GraphError(RqError, ValueError):
    """The frozen graph cannot be used as given (not a GraphDef, variables left, unknown node names,
    input shapes that disagree with the graph)."""


class InputFnError(RqError, ValueError):
    """The calibration input_fn cannot be imported, or returns something other than a dict of the
    input node names to arrays."""
