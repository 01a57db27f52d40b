from django.urls import path

from . import views

urlpatterns = [path("cart/add/<str:sku>", views.add_to_cart)]
