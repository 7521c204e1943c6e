"""DynamoDB's data shapes and the batched conditional write, in one place.

    to_attr / to_item          Python values -> attribute values (the one codec)
    from_attr / from_item      attribute values -> Python values (botocore's or wire form)
    wire_json                  a request body in the wire form, for `AwsClients.send_encoded`
    insert_statement / update_statement / execute_statements
                               conditional PartiQL writes, up to 25 in one request, each with
                               its own condition and result (BatchExecuteStatement)

Errors from DynamoDB arrive translated by `shared.aws` (`shared.errors`): a failed condition
is a `ConditionFailedError`, a cancelled transaction a `TransactionCanceledError`.
"""

from shared.dynamodb._codec import (
    AttributeValue,
    Item,
    from_attr,
    from_item,
    to_attr,
    to_item,
    wire_json,
)
from shared.dynamodb._statements import (
    MAX_STATEMENTS,
    Statement,
    StatementResult,
    execute_statements,
    insert_statement,
    update_statement,
)

__all__ = [
    "MAX_STATEMENTS",
    "AttributeValue",
    "Item",
    "Statement",
    "StatementResult",
    "execute_statements",
    "from_attr",
    "from_item",
    "insert_statement",
    "to_attr",
    "to_item",
    "update_statement",
    "wire_json",
]
