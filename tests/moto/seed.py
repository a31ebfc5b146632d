"""Seeds a running moto_server with an ECS topology for the integration tests.

Reads a JSON "topology" document on stdin and prints what it created as JSON on stdout.
The endpoint comes from AWS_ENDPOINT_URL; credentials and region from the usual AWS_* variables.

Topology (every key optional):
{
  "clusters": ["filot-backend-cluster"],
  "task_definitions": [<RegisterTaskDefinition request body, camelCase as AWS documents it>],
  "target_groups": [{"name": "filot-backend-tg", "port": 8080, "protocol": "HTTP",
                     "target_type": "ip", "health_check_path": "/health"}],
  "services": [{"cluster": "filot-backend-cluster", "name": "filot-backend-service",
                "task_definition": "filot-backend-task", "desired_count": 3,
                "launch_type": "FARGATE", "tags": {"team": "filot"},
                "target_group": "filot-backend-tg", "container_name": "api",
                "container_port": 8080, "deleted": false}],
  "auto_scaling_groups": [{"name": "filot-ocr-gpu-asg", "min_size": 1, "max_size": 4,
                           "desired_capacity": 1, "instance_type": "g4dn.xlarge",
                           "cluster": "filot-ocr-gpu-cluster"}]
}
A service with "deleted": true is created and then deleted, so that it reads as INACTIVE.
An Auto Scaling Group with "cluster" has its instances registered as container instances there.

Output:
{"vpc_id": ..., "subnet_ids": [...], "task_definitions": {family: latest ARN},
 "target_groups": {name: ARN}, "services": {"cluster/name": ARN},
 "auto_scaling_groups": {name: [instance IDs]}, "container_instances": {cluster: [ARNs]}}
"""

import json
import os
import sys

import boto3


def client(name):
    return boto3.client(
        name,
        endpoint_url=os.environ["AWS_ENDPOINT_URL"],
        region_name=os.environ.get("AWS_REGION", "ap-southeast-2"),
    )


def main():
    raw = sys.stdin.read()
    topology = json.loads(raw) if raw.strip() else {}
    ecs, ec2, elbv2, asg = client("ecs"), client("ec2"), client("elbv2"), client("autoscaling")
    out = {
        "task_definitions": {},
        "target_groups": {},
        "services": {},
        "auto_scaling_groups": {},
        "container_instances": {},
    }

    # moto creates a default VPC with one default subnet per availability zone.
    vpc_id = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0][
        "VpcId"
    ]
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]
    subnet_ids = sorted(s["SubnetId"] for s in subnets)
    # moto's create_service fails with a 500 when awsvpcConfiguration lacks securityGroups.
    security_group = ec2.describe_security_groups(
        Filters=[{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "group-name", "Values": ["default"]}]
    )["SecurityGroups"][0]["GroupId"]
    out["vpc_id"] = vpc_id
    out["subnet_ids"] = subnet_ids

    for cluster in topology.get("clusters", []):
        ecs.create_cluster(clusterName=cluster)

    for td in topology.get("task_definitions", []):
        arn = ecs.register_task_definition(**td)["taskDefinition"]["taskDefinitionArn"]
        out["task_definitions"][td["family"]] = arn

    for tg in topology.get("target_groups", []):
        created = elbv2.create_target_group(
            Name=tg["name"],
            Protocol=tg.get("protocol", "HTTP"),
            Port=tg.get("port", 80),
            VpcId=vpc_id,
            TargetType=tg.get("target_type", "ip"),
            HealthCheckPath=tg.get("health_check_path", "/"),
        )
        out["target_groups"][tg["name"]] = created["TargetGroups"][0]["TargetGroupArn"]

    for svc in topology.get("services", []):
        args = {
            "cluster": svc["cluster"],
            "serviceName": svc["name"],
            "taskDefinition": svc["task_definition"],
            "desiredCount": svc.get("desired_count", 1),
            "launchType": svc.get("launch_type", "FARGATE"),
        }
        if args["launchType"] == "FARGATE":
            args["networkConfiguration"] = {
                "awsvpcConfiguration": {
                    "subnets": subnet_ids[:2],
                    "securityGroups": [security_group],
                    "assignPublicIp": "DISABLED",
                }
            }
        if svc.get("tags"):
            args["tags"] = [{"key": k, "value": v} for k, v in sorted(svc["tags"].items())]
        if svc.get("target_group"):
            args["loadBalancers"] = [
                {
                    "targetGroupArn": out["target_groups"][svc["target_group"]],
                    "containerName": svc["container_name"],
                    "containerPort": svc["container_port"],
                }
            ]
        arn = ecs.create_service(**args)["service"]["serviceArn"]
        out["services"][f"{svc['cluster']}/{svc['name']}"] = arn
        if svc.get("deleted"):
            # A deleted service lingers as INACTIVE, as it does in ECS for a while.
            ecs.delete_service(cluster=svc["cluster"], service=svc["name"], force=True)

    for group in topology.get("auto_scaling_groups", []):
        template = f"{group['name']}-lt"
        # Any image ID will do: moto does not check that the AMI exists.
        ec2.create_launch_template(
            LaunchTemplateName=template,
            LaunchTemplateData={
                "ImageId": group.get("image_id", "ami-12c6146b"),
                "InstanceType": group.get("instance_type", "g4dn.xlarge"),
            },
        )
        asg.create_auto_scaling_group(
            AutoScalingGroupName=group["name"],
            LaunchTemplate={"LaunchTemplateName": template, "Version": "$Latest"},
            MinSize=group.get("min_size", 1),
            MaxSize=group.get("max_size", 4),
            DesiredCapacity=group.get("desired_capacity", 1),
            VPCZoneIdentifier=",".join(subnet_ids[:2]),
        )
        described = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[group["name"]])
        ids = [i["InstanceId"] for i in described["AutoScalingGroups"][0]["Instances"]]
        out["auto_scaling_groups"][group["name"]] = ids
        cluster = group.get("cluster")
        if cluster:
            for instance_id in ids:
                doc = json.dumps({"instanceId": instance_id})
                ci = ecs.register_container_instance(cluster=cluster, instanceIdentityDocument=doc)
                arn = ci["containerInstance"]["containerInstanceArn"]
                out["container_instances"].setdefault(cluster, []).append(arn)

    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
