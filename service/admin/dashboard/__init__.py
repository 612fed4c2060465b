"""The operator's dashboard under `/admin`: server-rendered pages, no script."""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from service.admin.dashboard import campaign_check, importing, subscriber_list, topics, views


def routes() -> list[BaseRoute]:
    return [
        Route("/admin", views.overview, methods=["GET"]),
        Route("/admin/login", views.login_form, methods=["GET"]),
        Route("/admin/login", views.login, methods=["POST"]),
        Route("/admin/logout", views.logout, methods=["POST"]),
        Route("/admin/static/admin.css", views.stylesheet, methods=["GET"]),
        Route("/admin/campaigns", views.campaign_list, methods=["GET"]),
        Route("/admin/campaigns", views.create_campaign, methods=["POST"]),
        Route("/admin/campaigns/new", views.new_campaign_form, methods=["GET"]),
        Route("/admin/campaigns/{campaign_id:int}", views.campaign_page, methods=["GET"]),
        Route(
            "/admin/campaigns/{campaign_id:int}/preview",
            campaign_check.preview_page,
            methods=["GET"],
        ),
        Route(
            "/admin/campaigns/{campaign_id:int}/preview/html",
            campaign_check.preview_frame,
            methods=["GET"],
        ),
        Route(
            "/admin/campaigns/{campaign_id:int}/test", campaign_check.send_test, methods=["POST"]
        ),
        Route("/admin/campaigns/{campaign_id:int}/edit", campaign_check.edit_form, methods=["GET"]),
        Route("/admin/campaigns/{campaign_id:int}/edit", campaign_check.edit, methods=["POST"]),
        Route("/admin/campaigns/{campaign_id:int}/send", views.send_confirm, methods=["GET"]),
        Route("/admin/campaigns/{campaign_id:int}/send", views.send, methods=["POST"]),
        Route("/admin/campaigns/{campaign_id:int}/schedule", views.schedule_send, methods=["POST"]),
        Route(
            "/admin/campaigns/{campaign_id:int}/unschedule",
            views.unschedule_send,
            methods=["POST"],
        ),
        Route("/admin/campaigns/{campaign_id:int}/resume", views.resume, methods=["POST"]),
        Route("/admin/campaigns/{campaign_id:int}/cancel", views.cancel, methods=["POST"]),
        Route("/admin/topics", topics.topic_list, methods=["GET"]),
        Route("/admin/topics", topics.create_topic, methods=["POST"]),
        Route("/admin/topics/{slug}/delete", topics.delete_topic, methods=["POST"]),
        Route("/admin/subscribers", views.subscribers_form, methods=["GET"]),
        Route("/admin/import", importing.import_form, methods=["GET"]),
        Route("/admin/import", importing.import_upload, methods=["POST"]),
        Route("/admin/subscribers", views.lookup, methods=["POST"]),
        Route("/admin/subscribers/list", subscriber_list.list_get, methods=["GET"]),
        Route("/admin/subscribers/list", subscriber_list.list_post, methods=["POST"]),
        Route("/admin/subscribers/export", views.export, methods=["POST"]),
        Route("/admin/subscribers/erase", views.erase, methods=["POST"]),
    ]
