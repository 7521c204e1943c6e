import pytest

from shared.aws import AwsClients, aws_errors
from shared.errors import AwsRequestError

pytestmark = pytest.mark.emulator


async def test_clients_reach_emulator_and_count_requests(aws: AwsClients) -> None:
    sqs = await aws.client("sqs")
    before = aws.counter.total
    await sqs.create_queue(QueueName="probe")
    listed = await sqs.list_queues()
    assert any(url.endswith("/probe") for url in listed["QueueUrls"])
    assert aws.counter.total - before == 2
    assert aws.counter.snapshot()["sqs.CreateQueue"] >= 1


async def test_sdk_errors_are_translated(aws: AwsClients) -> None:
    sqs = await aws.client("sqs")
    with pytest.raises(AwsRequestError) as info, aws_errors():
        await sqs.get_queue_url(QueueName="does-not-exist")
    assert info.value.code is not None
    assert not info.value.retryable
