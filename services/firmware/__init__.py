"""The firmware bounded context: staged rollouts of firmware over the fleet.

An operator uploads a version (`fleetline firmware upload`) and starts a rollout; a Step
Functions Standard workflow per rollout (deploy/statemachines/firmware-rollout.asl.json)
plans its waves into S3 manifests, runs each wave as a Distributed Map with one callback
token per batch of up to 1,000 devices, waits for approval between waves when asked, and
rolls back every updated device when the abort threshold is crossed. Devices are commanded
through AWS IoT Jobs and answer on the device path (FirmwareVersionReported /
FirmwareUpdateFailed), counted once each by the acks worker.

Modules: `domain` (decisions, no I/O), `planner` (manifests), `tasks` (the workflow's
callback tasks), `acks` (answers), `lifecycle` (state changes with their events), `service`
(what an operator does), `cli`, `commands` (IoT Jobs), `events`, `errors`, `worker` (the ECS
services). See docs/firmware.md.
"""
